"""Benchmark result tables (Parquet): schema, write, read, and where they live.

One table per benchmark run. Rows: one per evaluated sequence (``row = "sequence"``) plus one
dataset mean (``row = "mean"``, ``sequence = "mean"``). Depth means are pixel-weighted
(weights ``valid_pixels``), pose means are plain means over the sequences with a pose result — the
protocol's aggregation (:func:`geo4d.metrics.benchmark.dataset_means`). The protocol's name and
parameters, the predictor and the run identity are in the Parquet schema metadata under the key
``geo4d_results`` (JSON).

Columns (:data:`RESULT_COLUMNS`): ``row``, ``dataset``, ``sequence``, ``method``, ``n_frames``,
``depth_evaluated``, ``abs_rel``, ``sq_rel``, ``rmse``, ``log_rmse``, ``delta_1_25``,
``delta_1_25_2``, ``delta_1_25_3`` (fractions), ``valid_pixels``, ``depth_scale``, ``depth_shift``,
``pose_evaluated``, ``ate``, ``rpe_trans``, ``rpe_rot`` (degrees), ``ate_rel``, ``focal_err_pct``,
``seconds``, ``error`` (null unless the sequence failed). Metrics that do not apply are null.

Location: by default ``<store>.results/`` beside the store (a store is a Zarr group, which must not
hold foreign files); tables are ``<run_name>.parquet`` with a ``<run_name>.md`` summary.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from geo4d.errors import InputError

__all__ = [
    "RESULTS_FORMAT",
    "RESULTS_VERSION",
    "RESULT_COLUMNS",
    "results_schema",
    "results_table",
    "write_results",
    "read_results",
    "default_results_dir",
    "list_result_files",
    "benchmark_workdir",
    "write_text",
]

RESULTS_FORMAT = "geo4d-benchmark-results"
RESULTS_VERSION = 1
_META_KEY = b"geo4d_results"

#: (name, Arrow type) of every column, in order.
RESULT_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("row", pa.string()),
    ("dataset", pa.string()),
    ("sequence", pa.string()),
    ("method", pa.string()),
    ("n_frames", pa.int64()),
    ("depth_evaluated", pa.bool_()),
    ("abs_rel", pa.float64()),
    ("sq_rel", pa.float64()),
    ("rmse", pa.float64()),
    ("log_rmse", pa.float64()),
    ("delta_1_25", pa.float64()),
    ("delta_1_25_2", pa.float64()),
    ("delta_1_25_3", pa.float64()),
    ("valid_pixels", pa.int64()),
    ("depth_scale", pa.float64()),
    ("depth_shift", pa.float64()),
    ("pose_evaluated", pa.bool_()),
    ("ate", pa.float64()),
    ("rpe_trans", pa.float64()),
    ("rpe_rot", pa.float64()),
    ("ate_rel", pa.float64()),
    ("focal_err_pct", pa.float64()),
    ("seconds", pa.float64()),
    ("error", pa.string()),
)
_NAMES = [n for n, _ in RESULT_COLUMNS]


def results_schema(metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    """The Arrow schema, with ``metadata`` (JSON) under ``geo4d_results``."""
    meta = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, **dict(metadata or {})}
    return pa.schema([pa.field(n, t) for n, t in RESULT_COLUMNS],
                     metadata={_META_KEY: json.dumps(meta, default=str, allow_nan=False).encode()})


def _clean(v: Any, typ: pa.DataType) -> Any:
    if v is None:
        return None
    if pa.types.is_floating(typ):
        f = float(v)
        return f if f == f and f not in (float("inf"), float("-inf")) else None
    if pa.types.is_integer(typ):
        f = float(v)
        return int(round(f)) if f == f else None
    if pa.types.is_boolean(typ):
        return bool(v)
    return str(v)


def results_table(rows: Iterable[Mapping[str, Any]], metadata: Mapping[str, Any] | None = None) -> pa.Table:
    """Arrow table from row dicts (missing keys and NaN/inf become null; unknown keys are refused)."""
    rows = list(rows)
    for r in rows:
        unknown = set(r) - set(_NAMES)
        if unknown:
            raise ValueError(f"results row: unknown columns {sorted(unknown)}")
        if r.get("row") not in ("sequence", "mean"):
            raise ValueError(f"results row: 'row' must be 'sequence' or 'mean', got {r.get('row')!r}")
    cols = {n: pa.array([_clean(r.get(n), t) for r in rows], type=t) for n, t in RESULT_COLUMNS}
    return pa.table(cols, schema=results_schema(metadata))


def _fs(location: str, storage_options: dict | None):
    import fsspec

    fs, path = fsspec.core.url_to_fs(location, **(storage_options or {}))
    return fs, path


def write_results(location: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
                  metadata: Mapping[str, Any] | None = None, storage_options: dict | None = None) -> str:
    """Write a results table to ``location`` (path or fsspec URL, ``….parquet``); returns it.

    ``metadata`` should hold at least ``dataset``, ``protocol`` (name and parameters) and
    ``predictor``; ``created_at`` is added.
    """
    meta = {"created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **dict(metadata or {})}
    table = results_table(rows, meta)
    loc = str(location)
    fs, path = _fs(loc, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = path + ".tmp"
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f)
    fs.mv(tmp, path)
    return loc


def read_results(location: str | os.PathLike, storage_options: dict | None = None) -> tuple[list[dict], dict]:
    """``(rows, metadata)`` of a results table written by :func:`write_results`.

    Raises:
        InputError: missing file, not Parquet, or a table without the ``geo4d_results`` metadata.
    """
    loc = str(location)
    fs, path = _fs(loc, storage_options)
    if not fs.exists(path):
        raise InputError(f"{loc}: no such results table")
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{loc}: not a readable Parquet file ({exc})") from exc
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise InputError(f"{loc}: not a geo4d results table (no geo4d_results metadata)")
    meta = json.loads(raw)
    if meta.get("format") != RESULTS_FORMAT or int(meta.get("version", 0)) > RESULTS_VERSION:
        raise InputError(f"{loc}: results format {meta.get('format')!r} v{meta.get('version')} is not readable here")
    return table.to_pylist(), meta


def default_results_dir(store_location: str | os.PathLike) -> str:
    """``<store>.results`` beside the store (same filesystem / bucket)."""
    s = str(store_location).rstrip("/")
    return s + ".results"


def list_result_files(location: str | os.PathLike, storage_options: dict | None = None) -> list[str]:
    """Results tables (``*.parquet``) in a directory (sorted), or the file itself."""
    loc = str(location)
    fs, path = _fs(loc, storage_options)
    if not fs.exists(path):
        raise InputError(f"{loc}: no such results directory or file")
    if fs.isfile(path):
        return [loc]
    found = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    proto = loc.split("://", 1)[0] + "://" if "://" in loc else ""
    return [proto + p if proto and not p.startswith(proto) else p for p in found]


def benchmark_workdir(store_location: str | os.PathLike, dataset: str) -> Path:
    """A local directory for a benchmark run's auxiliary files (e.g. ground truth resampled for the
    synthetic predictor): ``<store>.work/<dataset>`` for a local store, else under the user cache."""
    s = str(store_location).rstrip("/")
    if "://" in s and not s.startswith("file://"):
        import hashlib

        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geo4d" / "bench"
        return base / hashlib.sha1(s.encode()).hexdigest()[:12] / dataset
    return Path(s.removeprefix("file://") + ".work") / dataset


def write_text(location: str | os.PathLike, text: str, storage_options: dict | None = None) -> str:
    """Write a text file (e.g. a run's Markdown summary) to a path or URL."""
    loc = str(location)
    fs, path = _fs(loc, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)
    return loc
