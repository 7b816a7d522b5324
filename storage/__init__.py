"""The one place that knows paths, Zarr layouts and Parquet schemas (docs/store.md)."""
