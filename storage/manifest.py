"""``STORE/manifest.parquet``: one row per video (id, source, frames, stage states, timings, metrics,
and its shots with their quality scores as list columns, one entry per shot)."""

from __future__ import annotations

import json

import pyarrow as pa

from geo4d.quality import SCORE_NAMES
from storage.store import STAGES, Store

__all__ = ["MANIFEST_NAME", "manifest_table", "write_manifest"]

MANIFEST_NAME = "manifest.parquet"


def manifest_table(store: Store) -> pa.Table:
    """Columns: video_id, source, n_frames, height, width, ``<stage>_status`` (complete / failed /
    damaged / pending), ``<stage>_seconds``, ``<stage>_finished_at``, ``error`` (first failure),
    ``damage`` (what ``geo4d verify`` found, one line per damaged stage), ``metrics`` (JSON); then
    ``shots`` (how many), ``shots_skipped`` and ``shot_skipped`` (one line per skipped shot:
    ``<start>–<end>: <reason>``), and per shot (lists, in shot order, from the fused result's
    scores; empty before fusion): ``shot_start``, ``shot_end`` and every score of
    :data:`geo4d.quality.SCORE_NAMES` (None for a skipped shot)."""
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
        row.update(_shot_columns(store, vid, recs))
        rows.append(row)
    schema = pa.schema(
        [("video_id", pa.string()), ("source", pa.string()), ("n_frames", pa.int64()), ("height", pa.int64()),
         ("width", pa.int64()), ("error", pa.string()), ("damage", pa.string())]
        + [f for st in STAGES for f in ((f"{st}_status", pa.string()), (f"{st}_seconds", pa.float64()),
                                         (f"{st}_finished_at", pa.string()))]
        + [("metrics", pa.string()), ("shots", pa.int64()), ("shots_skipped", pa.int64()), ("shot_skipped", pa.string()),
           ("shot_start", pa.list_(pa.int64())), ("shot_end", pa.list_(pa.int64()))]
        + [(k, pa.list_(pa.bool_() if k == "data_checks" else pa.float64())) for k in SCORE_NAMES]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _shot_columns(store: Store, video_id: str, records: dict) -> dict:
    """The row's shot columns (see :func:`manifest_table`)."""
    rec = records.get("shots") or {}
    n = rec.get("shots") if rec.get("status") == "complete" else None
    skipped = rec.get("skipped_shots") or [] if n is not None else []
    scores = store.read_shot_scores(video_id) if (records.get("fuse") or {}).get("status") == "complete" else []
    out = {"shots": n if n is not None else (1 if scores else None), "shots_skipped": len(skipped),
           "shot_skipped": "\n".join(f"{s['start']}–{s['end'] - 1}: {s['reason']}" for s in skipped) or None,
           "shot_start": [r["start"] for r in scores], "shot_end": [r["end"] for r in scores]}
    out.update({k: [r.get(k) for r in scores] for k in SCORE_NAMES})
    return out


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
