"""``STORE/manifest.parquet``: one row per video (id, source, frames, stage states, timings, metrics)."""

from __future__ import annotations

import json

import pyarrow as pa

from storage.store import STAGES, Store

__all__ = ["MANIFEST_NAME", "manifest_table", "write_manifest"]

MANIFEST_NAME = "manifest.parquet"


def manifest_table(store: Store) -> pa.Table:
    """Columns: video_id, source, n_frames, height, width, ``<stage>_status`` (complete / failed /
    damaged / pending), ``<stage>_seconds``, ``<stage>_finished_at``, ``error`` (first failure),
    ``damage`` (what ``geo4d verify`` found, one line per damaged stage), ``metrics`` (JSON)."""
    rows = []
    for vid in store.video_ids():
        attrs = store.video_attrs(vid)
        recs = attrs.get("stages", {}) or {}
        row = {"video_id": vid, "source": str(attrs.get("source", "")), "n_frames": int(attrs.get("n_frames", 0)),
               "height": int(attrs.get("height", 0)), "width": int(attrs.get("width", 0)), "error": None,
               "damage": _damage_text(recs)}
        for st in STAGES:
            rec = recs.get(st) or {}
            row[f"{st}_status"] = rec.get("status", "pending")
            row[f"{st}_seconds"] = rec.get("seconds")
            row[f"{st}_finished_at"] = rec.get("finished_at")
            if rec.get("status") == "failed" and row["error"] is None:
                row["error"] = f"{st}: {rec.get('error', '')}"
        metrics = (recs.get("evaluate") or {}).get("metrics")
        row["metrics"] = json.dumps(metrics) if metrics else None
        rows.append(row)
    schema = pa.schema(
        [("video_id", pa.string()), ("source", pa.string()), ("n_frames", pa.int64()), ("height", pa.int64()),
         ("width", pa.int64()), ("error", pa.string()), ("damage", pa.string())]
        + [f for st in STAGES for f in ((f"{st}_status", pa.string()), (f"{st}_seconds", pa.float64()),
                                         (f"{st}_finished_at", pa.string()))]
        + [("metrics", pa.string())]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _damage_text(records: dict) -> str | None:
    """``<stage>: <array> chunks [..] (<problem>)`` per damaged stage, one per line; None when none."""
    lines = []
    for st in STAGES:
        rec = records.get(st) or {}
        if rec.get("status") == "damaged":
            parts = [f"{name} chunks {d.get('chunks')} ({d.get('problem')})" for name, d in (rec.get("damage") or {}).items()]
            lines.append(f"{st}: {'; '.join(parts) or 'damaged'}")
    return "\n".join(lines) or None


def write_manifest(store: Store, storage_options: dict | None = None) -> str:
    """Write ``STORE/manifest.parquet`` (local path or fsspec URL); returns its location."""
    import fsspec
    import pyarrow.parquet as pq

    location = store.location.rstrip("/") + "/" + MANIFEST_NAME
    with fsspec.open(location, "wb", **(storage_options or {})) as f:
        pq.write_table(manifest_table(store), f)
    return location
