"""geo4d-pipeline: Geo4D video → 4D geometry (pure computation; no Prefect imports here)."""

__version__ = "0.1.0"
