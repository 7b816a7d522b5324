"""The exported 4D dataset (docs/dataset.md): one Zarr v3 group per video plus a Parquet index.

Layout::

    OUTDIR/index.parquet                 one row per video (statistics, metrics, paths); conventions in the schema metadata
    OUTDIR/videos/<video_id>.zarr/       rgb uint8 (T,H,W,3), depth (T,H,W) (0 = invalid), confidence (T,H,W),
                                         points (T,H,W,3) world, intrinsics (T,3,3), world_from_cam (T,4,4)

Each video is written under a temporary name and renamed when complete; the index is written last,
so an interrupted export never lists a half-written video. Each video's frames and fused arrays are
verified first (:mod:`storage.verify`: every chunk present, decodable, checksum intact): a damaged
video is not exported but listed with its reason in the index's ``skipped`` column, so a dataset
never holds fill values in place of lost data.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from geo4d.errors import InputError, StoreError
from storage.store import Store
from storage.verify import check_video

__all__ = ["EXPORT_CONVENTIONS", "export_dataset", "read_index"]

EXPORT_CONVENTIONS = (
    "OpenCV camera axes (x right, y down, z forward); pixel centres at integer (u, v); world_from_cam maps "
    "camera points to world points (camera-to-world); frame 0 of each video is its world frame; depth is "
    "z-depth, 0 where invalid; one scale per video (frame 0 median depth = 1 unless the reconstruction says otherwise)"
)
_CODECS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())
#: Zarr v3 dimension names (xarray opens the groups with them).
DIMENSIONS = {"rgb": ("frame", "y", "x", "rgb"), "depth": ("frame", "y", "x"), "confidence": ("frame", "y", "x"),
              "points": ("frame", "y", "x", "xyz"), "intrinsics": ("frame", "k_row", "k_col"),
              "world_from_cam": ("frame", "pose_row", "pose_col")}


def _path_length(world_from_cam: np.ndarray) -> float:
    c = world_from_cam[:, :3, 3]
    return float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum())


def _write_video(dest: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for name, arr in arrays.items():
        a = g.create_array(name, shape=arr.shape, chunks=(1,) + arr.shape[1:], dtype=arr.dtype,
                           compressors=_CODECS, fill_value=0, dimension_names=DIMENSIONS[name],
                           config={"write_empty_chunks": True})
        a[:] = arr
    g.attrs.update(attrs)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def read_index(outdir: str | Path) -> pa.Table:
    return pq.read_table(Path(outdir) / "index.parquet")


_SCHEMA = pa.schema(
    [("video_id", pa.string()), ("source", pa.string()), ("n_frames", pa.int64()), ("height", pa.int64()),
     ("width", pa.int64()), ("fps", pa.float64()), ("zarr_path", pa.string()), ("fused_finished_at", pa.string()),
     ("valid_fraction", pa.float64()), ("depth_median", pa.float64()), ("depth_min", pa.float64()),
     ("depth_max", pa.float64()), ("focal_mean", pa.float64()), ("path_length", pa.float64()),
     ("abs_rel", pa.float64()), ("delta_1_25", pa.float64()), ("ate", pa.float64()), ("rpe_trans", pa.float64()),
     ("rpe_rot", pa.float64()), ("skipped", pa.string())],
    metadata={"geo4d_dataset": json.dumps({"version": 1, "conventions": EXPORT_CONVENTIONS})},
)


def export_dataset(store: Store, outdir: str | Path, video_ids: list[str] | None = None, overwrite: bool = False,
                   progress: Callable[[str], None] | None = None) -> pa.Table:
    """Export every video whose fuse stage is complete (or ``video_ids``); returns the index table.

    A video already exported from the same fused result (same fuse ``finished_at``) is kept unless
    ``overwrite``. Videos not fused are skipped with a message. A damaged video (recorded by
    ``geo4d verify``, or found so by the check of its frames and fused arrays made here) is skipped
    too: its row has ``skipped`` = the reason and no data (``zarr_path`` null).
    """
    say = progress or (lambda _m: None)
    out = Path(outdir)
    have = store.video_ids()
    if video_ids:
        unknown = [v for v in video_ids if v not in have]
        if unknown:
            raise InputError(f"{store.location}: no video {unknown[0]!r} to export (have: {', '.join(have) or 'none'})")
    chosen = video_ids or have
    (out / "videos").mkdir(parents=True, exist_ok=True)
    old = {}
    if (out / "index.parquet").exists():
        old = {r["video_id"]: r for r in read_index(out).to_pylist()}
    rows = {k: v for k, v in old.items() if k not in chosen}
    for vid in chosen:
        rec = store.stage_record(vid, "fuse") or {}
        if rec.get("status") not in ("complete", "damaged"):
            say(f"skip {vid}: fuse stage not complete")
            if vid in old:
                rows[vid] = old[vid]
            continue
        prev = old.get(vid)
        if prev and not overwrite and prev.get("fused_finished_at") == rec.get("finished_at") \
                and prev.get("zarr_path") and (out / prev["zarr_path"]).exists():
            say(f"keep {vid}: already exported from the same fused result")
            rows[vid] = prev
            continue
        reason = damage_reason(store, vid)
        if reason is None:
            try:
                rows[vid] = _export_video(store, vid, out, rec)
                say(f"exported {vid}: {rows[vid]['n_frames']} frames → {out / rows[vid]['zarr_path']}")
                continue
            except StoreError as exc:  # damaged between the check and the read
                reason = str(exc)
        say(f"skip {vid}: damaged, not exported: {reason}")
        info = store.video_info(vid)
        rows[vid] = {"video_id": vid, "source": info.source, "n_frames": info.n_frames, "height": info.height,
                     "width": info.width, "fps": info.fps, "fused_finished_at": rec.get("finished_at"),
                     "skipped": f"damaged: {reason}"}
    table = pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=_SCHEMA)
    tmp = out / "index.parquet.partial"
    pq.write_table(table, tmp)
    tmp.replace(out / "index.parquet")
    return table


def damage_reason(store: Store, video_id: str) -> str | None:
    """Why the frames or fused arrays of ``video_id`` cannot be exported (damage recorded by
    ``geo4d verify`` or found now by reading every chunk), or None when they are whole."""
    recs = store.stage_records(video_id)
    recorded = []
    for st in ("decode", "fuse"):
        rec = recs.get(st) or {}
        if rec.get("status") == "damaged":
            found = "; ".join(f"{a} {d.get('problem')}" for a, d in (rec.get("damage") or {}).items())
            recorded.append(f"{st} recorded damaged by geo4d verify ({found})")
    if recorded:
        return "; ".join(recorded)
    check = check_video(store, video_id, stages=("decode", "fuse"))
    return check.summary() if check.damaged else None


def _export_video(store: Store, vid: str, out: Path, rec: dict) -> dict:
    """Write one video's dataset group; returns its index row."""
    info = store.video_info(vid)
    fused = store.read_fused(vid)
    rgb = store.read_frames(vid)
    depth, conf = fused.depth, fused.confidence
    valid = (conf > 0) & (depth > 0)
    arrays = {"rgb": rgb.astype(np.uint8), "depth": depth.astype(np.float32), "confidence": conf.astype(np.float32),
              "points": fused.points.astype(np.float32), "intrinsics": fused.intrinsics.astype(np.float32),
              "world_from_cam": fused.world_from_cam.astype(np.float32)}
    rel = f"videos/{vid}.zarr"
    _write_video(out / rel, arrays, {"video_id": vid, "source": info.source, "fps": info.fps,
                                     "conventions": EXPORT_CONVENTIONS})
    metrics = ((store.stage_record(vid, "evaluate") or {}).get("metrics")) or {}
    d = depth[valid]
    return {
        "video_id": vid, "source": info.source, "n_frames": info.n_frames, "height": info.height,
        "width": info.width, "fps": info.fps, "zarr_path": rel, "fused_finished_at": rec.get("finished_at"),
        "valid_fraction": float(valid.mean()),
        "depth_median": float(np.median(d)) if d.size else None,
        "depth_min": float(d.min()) if d.size else None, "depth_max": float(d.max()) if d.size else None,
        "focal_mean": float(np.mean((fused.intrinsics[:, 0, 0] + fused.intrinsics[:, 1, 1]) / 2)),
        "path_length": _path_length(fused.world_from_cam),
        "abs_rel": metrics.get("abs_rel"), "delta_1_25": metrics.get("delta_1_25"),
        "ate": metrics.get("ate"), "rpe_trans": metrics.get("rpe_trans"), "rpe_rot": metrics.get("rpe_rot"),
        "skipped": None,
    }
