"""The exported 4D dataset (docs/dataset.md, docs/curation.md): one Zarr v3 group per shot plus a Parquet index.

Layout::

    OUTDIR/index.parquet                 one row per shot (statistics, metrics, scores, split, paths); conventions in the schema metadata
    OUTDIR/DATASET.md, dataset.json      the dataset card (storage.dataset_card)
    OUTDIR/videos/<video_id>.zarr/       a video of one shot; a video of several: videos/<video_id>-shot<k>.zarr/ per shot:
                                         rgb uint8 (T,H,W,3), depth (T,H,W) (0 = invalid), confidence (T,H,W),
                                         depth_source uint8 (T,H,W) (0 none, 1 point map, 2 disparity only),
                                         points (T,H,W,3) world, intrinsics (T,3,3), world_from_cam (T,4,4)

Each video is written under a temporary name and renamed when complete; the index is written last,
so an interrupted export never lists a half-written video. Each video's frames and fused arrays are
verified first (:mod:`storage.verify`: every chunk present, decodable, checksum intact): a damaged
video is not exported but listed with its reason in the index's ``skipped`` column, so a dataset
never holds fill values in place of lost data.

The standard formats (:func:`export_formats`; docs/exports/) are written per export unit and
format — the units of the Zarr dataset: a video of one shot as ``OUTDIR/<format>/<video_id>/``, each
reconstructed shot of a video of several as ``OUTDIR/<format>/<video_id>-shot<k>/`` (every shot has
its own world frame and scale, so they never share a file) — by the pure writers of
:mod:`geo4d.formats`, each staged in ``<unit>.partial`` and renamed when complete, with an
``export.json`` sidecar (provenance, the fused result it came from, the shot, options); damaged
videos are skipped the same way (no index: the caller reports them). Every format of one export
holds the same shots: those the curation keeps (:func:`storage.curation.plan_shots`: the ``--where``
filter or the default one, ``--max-shots``; shots too short to reconstruct have no geometry), so a
shot the filter drops as corrupted reaches no format; an earlier export of a shot now dropped is
removed, so ``OUTDIR/<format>/`` holds exactly the kept shots of the chosen videos.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from geo4d.errors import InputError, StoreError
from geo4d.formats.depth import DEPTH_FORMATS
from geo4d.formats.points import Cloud, select_cloud
from geo4d.formats.tum import frame_timestamps
from geo4d.framing import Framing, depth_to_source, nearest_to_source
from geo4d.geometry import Geometry
from geo4d.quality import SCORE_NAMES
from geo4d.shots import Shot, is_single_shot
from storage.curation import Curation, ShotPlan, plan_shots, write_export_card
from storage.store import Store, VideoInfo
from storage.verify import check_video

__all__ = ["EXPORT_CONVENTIONS", "EXPORT_FORMATS", "POINT_BUDGETS", "ExportOptions", "damage_reason", "export_dataset",
           "export_formats", "format_units", "parse_formats", "read_index"]

EXPORT_CONVENTIONS = (
    "OpenCV camera axes (x right, y down, z forward); pixel centres at integer (u, v); world_from_cam maps "
    "camera points to world points (camera-to-world); frame 0 of each video is its world frame; depth is "
    "z-depth, 0 where invalid; one scale per video (frame 0 median depth = 1 unless the reconstruction says otherwise)"
)
_CODECS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())
#: Zarr v3 dimension names (xarray opens the groups with them).
DIMENSIONS = {"rgb": ("frame", "y", "x", "rgb"), "depth": ("frame", "y", "x"), "confidence": ("frame", "y", "x"),
              "depth_source": ("frame", "y", "x"),
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


_SCORE_FIELDS = [(k, pa.bool_() if k == "data_checks" else pa.float64()) for k in SCORE_NAMES]
_SCHEMA = pa.schema(
    [("video_id", pa.string()), ("source", pa.string()), ("n_frames", pa.int64()), ("height", pa.int64()),
     ("width", pa.int64()), ("fps", pa.float64()), ("zarr_path", pa.string()), ("fused_finished_at", pa.string()),
     ("valid_fraction", pa.float64()), ("depth_median", pa.float64()), ("depth_min", pa.float64()),
     ("depth_max", pa.float64()), ("focal_mean", pa.float64()), ("path_length", pa.float64()),
     ("abs_rel", pa.float64()), ("delta_1_25", pa.float64()), ("ate", pa.float64()), ("rpe_trans", pa.float64()),
     ("rpe_rot", pa.float64()), ("skipped", pa.string()),
     ("shot", pa.int64()), ("shot_start", pa.int64()), ("shot_end", pa.int64()), ("split", pa.string())]
    + _SCORE_FIELDS,
    metadata={"geo4d_dataset": json.dumps({"version": 2, "conventions": EXPORT_CONVENTIONS,
                                           "units": "one row per shot (docs/curation.md)"})},
)


def export_dataset(store: Store, outdir: str | Path, video_ids: list[str] | None = None, overwrite: bool = False,
                   progress: Callable[[str], None] | None = None, checked: dict[str, str | None] | None = None,
                   curation: Curation | None = None, card: bool = True) -> pa.Table:
    """Export every shot of every video whose fuse stage is complete (or of ``video_ids``) that
    ``curation`` keeps (default: :class:`storage.curation.Curation`, the default filter); returns
    the index table, one row per shot (docs/curation.md).

    A shot already exported from the same fused result (same fuse ``finished_at``) is kept unless
    ``overwrite``. Videos not fused are skipped with a message. A damaged video (recorded by
    ``geo4d verify``, or found so by the check of its frames and fused arrays made here) is skipped
    too: its rows have ``skipped`` = the reason and no data (``zarr_path`` null); so have the shots
    the curation drops (``skipped``: ``filter: …``, ``skipped: …``, ``max_shots: …``). ``checked``:
    damage found by an earlier check of this run (video id → reason or None), filled here. ``card``:
    also write the dataset card (:func:`storage.curation.write_export_card`).
    """
    say, out, curation = progress or (lambda _m: None), Path(outdir), curation or Curation()
    chosen = _chosen_videos(store, video_ids)
    plans, not_fused = plan_shots(store, chosen, curation, lambda v: _damage(store, v, checked))
    (out / "videos").mkdir(parents=True, exist_ok=True)
    old = {}
    if (out / "index.parquet").exists():
        old = {(r["video_id"], r.get("shot") or 0): r for r in read_index(out).to_pylist()}
    rows = {k: v for k, v in old.items() if k[0] not in chosen}
    for vid in not_fused:
        say(f"skip {vid}: fuse stage not complete")
        rows.update({k: v for k, v in old.items() if k[0] == vid})
    said: set[str] = set()
    for p in plans:
        rows[(p.video_id, p.shot)] = _export_plan(store, p, out, old.get((p.video_id, p.shot)), overwrite, say, said)
    _write_index(out, [rows[k] for k in sorted(rows)])
    if card:
        write_export_card(store, out, plans, curation, ["zarr"])
    return read_index(out)


def _write_index(out: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=_SCHEMA)
    tmp = out / "index.parquet.partial"
    pq.write_table(table, tmp)
    tmp.replace(out / "index.parquet")


def _export_plan(store: Store, p: ShotPlan, out: Path, prev: dict | None, overwrite: bool,
                 say: Callable[[str], None], said: set[str]) -> dict:
    """Export one planned shot (or record why not); returns its index row."""
    name = p.video_id if not p.multi else f"{p.video_id} shot {p.shot}"
    if p.reason is None and prev and not overwrite and prev.get("fused_finished_at") == p.fuse_record.get("finished_at") \
            and prev.get("zarr_path") == p.zarr_path and (out / p.zarr_path).exists():
        say(f"keep {name}: already exported from the same fused result")
        return {**prev, **_shot_fields(p)}
    reason = p.reason
    if reason is None:
        try:
            row = _export_video(store, p, out)
            say(f"exported {name}: {row['n_frames']} frames → {out / row['zarr_path']}")
            return row
        except StoreError as exc:  # damaged between the check and the read
            reason = f"damaged: {exc}"
    if reason.startswith("damaged: "):
        if p.video_id not in said:
            say(f"skip {p.video_id}: damaged, not exported: {reason.removeprefix('damaged: ')}")
            said.add(p.video_id)
    else:
        say(f"drop {name}: {reason}")
    info = store.video_info(p.video_id)
    return {"video_id": p.video_id, "source": info.source, "n_frames": p.n_frames, "height": info.height,
            "width": info.width, "fps": info.fps, "fused_finished_at": p.fuse_record.get("finished_at"),
            "skipped": reason, **_shot_fields(p)}


def _shot_fields(p: ShotPlan) -> dict:
    """The index's shot columns: shot, its frames, split, scores."""
    return {"shot": p.shot, "shot_start": p.start, "shot_end": p.end, "split": p.split,
            **{k: p.scores.get(k) for k in SCORE_NAMES}}


def _chosen_videos(store: Store, video_ids: list[str] | None) -> list[str]:
    """``video_ids`` (each must be in the store; :class:`InputError` otherwise), or all videos."""
    have = store.video_ids()
    if video_ids:
        unknown = [v for v in video_ids if v not in have]
        if unknown:
            raise InputError(f"{store.location}: no video {unknown[0]!r} to export (have: {', '.join(have) or 'none'})")
    return list(video_ids or have)


def _damage(store: Store, video_id: str, checked: dict[str, str | None] | None) -> str | None:
    """:func:`damage_reason`, checked once per export run (``checked`` remembers it)."""
    if checked is not None and video_id in checked:
        return checked[video_id]
    reason = damage_reason(store, video_id)
    if checked is not None:
        checked[video_id] = reason
    return reason


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


def _shot_metrics(store: Store, p: ShotPlan) -> dict:
    """The evaluation metrics of the shot (its video's for a video of one shot)."""
    rec = store.stage_record(p.video_id, "evaluate") or {}
    if p.multi:
        return next((r["metrics"] for r in rec.get("shot_metrics") or [] if r["shot"] == p.shot), {})
    return rec.get("metrics") or {}


def _export_video(store: Store, p: ShotPlan, out: Path) -> dict:
    """Write one shot's dataset group (a video of one shot: the whole video, as before shots); returns
    its index row."""
    vid, info = p.video_id, store.video_info(p.video_id)
    fused = store.read_fused(vid)
    sl = slice(p.start, p.end)
    rgb = store.read_frames(vid)[sl]
    depth, conf = fused.depth[sl], fused.confidence[sl]
    valid = (conf > 0) & (depth > 0)
    arrays = {"rgb": rgb.astype(np.uint8), "depth": depth.astype(np.float32), "confidence": conf.astype(np.float32),
              "depth_source": store.read_depth_source(vid)[sl].astype(np.uint8),
              "points": fused.points[sl].astype(np.float32), "intrinsics": fused.intrinsics[sl].astype(np.float32),
              "world_from_cam": fused.world_from_cam[sl].astype(np.float32)}
    attrs = {"video_id": vid, "source": info.source, "fps": info.fps, "conventions": EXPORT_CONVENTIONS}
    if p.multi:
        attrs.update(shot=p.shot, shot_start=p.start, shot_end=p.end)
    _write_video(out / p.zarr_path, arrays, attrs)
    metrics = _shot_metrics(store, p)
    d = depth[valid]
    return {
        "video_id": vid, "source": info.source, "n_frames": p.n_frames, "height": info.height,
        "width": info.width, "fps": info.fps, "zarr_path": p.zarr_path, "fused_finished_at": p.fuse_record.get("finished_at"),
        "valid_fraction": float(valid.mean()),
        "depth_median": float(np.median(d)) if d.size else None,
        "depth_min": float(d.min()) if d.size else None, "depth_max": float(d.max()) if d.size else None,
        "focal_mean": float(np.mean((arrays["intrinsics"][:, 0, 0] + arrays["intrinsics"][:, 1, 1]) / 2)),
        "path_length": _path_length(fused.world_from_cam[sl]),
        "abs_rel": metrics.get("abs_rel"), "delta_1_25": metrics.get("delta_1_25"),
        "ate": metrics.get("ate"), "rpe_trans": metrics.get("rpe_trans"), "rpe_rot": metrics.get("rpe_rot"),
        "skipped": None, **_shot_fields(p),
    }


# ---- standard formats (docs/exports/) ---------------------------------------------------------------
#: ``geo4d export --format`` choices: ``zarr`` the dataset above, ``webdataset`` training shards of the
#: same shots (:func:`storage.curation.export_webdataset`, one shard set per split), the others one
#: directory per kept shot and format, ``OUTDIR/<format>/<video_id>/`` (``<video_id>-shot<k>`` per shot
#: of a multi-shot video) — every format the same kept shots (:func:`storage.curation.plan_shots`).
EXPORT_FORMATS = ("zarr", "colmap", "nerfstudio", "tum", "ply", "glb", "depth", "webdataset")
#: Default point budget (whole video) of the formats holding a point cloud (geo4d.formats.points).
POINT_BUDGETS = {"colmap": 100_000, "nerfstudio": 100_000, "ply": 1_000_000, "glb": 200_000}
#: Version of the per-format layout (``export.json``'s ``version``).
FORMATS_VERSION = 1
SIDECAR = "export.json"
_SYNTHETIC_NOTE = ("SYNTHETIC test instrument: the predictions were derived from ground truth, "
                   "not made by the Geo4D network")


def parse_formats(values: list[str] | None) -> list[str]:
    """``--format`` values (repeated and/or comma-separated) → the formats in order, once each;
    default ``["zarr"]``; :class:`InputError` naming an unknown one.

    >>> parse_formats(["colmap,tum", "tum"]), parse_formats(None)
    (['colmap', 'tum'], ['zarr'])
    """
    names = [n.strip().lower() for v in (values or ["zarr"]) for n in v.split(",") if n.strip()]
    for n in names:
        if n not in EXPORT_FORMATS:
            raise InputError(f"--format: unknown format {n!r} (choose from {', '.join(EXPORT_FORMATS)})")
    return list(dict.fromkeys(names)) or ["zarr"]


#: Resolutions of the depth export: the store's frames, or the upright source video's pixels.
DEPTH_RESOLUTIONS = ("network", "source")


@dataclass(frozen=True)
class ExportOptions:
    """How the standard formats are written: ``max_points`` the point budget of every cloud (None:
    :data:`POINT_BUDGETS`), ``depth_format`` png or npz, ``resolution`` of the depth maps:
    ``network`` (the store's frames) or ``source`` (the upright source video's pixels: depth
    upsampled edge-preserving, confidence by nearest neighbour, K in source pixels; pixels cropped
    away are 0). The other formats are at the store's resolution, where its frames are."""

    max_points: int | None = None
    depth_format: str = "png"
    resolution: str = "network"

    def __post_init__(self) -> None:
        if self.max_points is not None and self.max_points < 1:
            raise InputError(f"--max-points: expected a positive number of points, got {self.max_points}")
        if self.depth_format not in DEPTH_FORMATS:
            raise InputError(f"--depth-format: expected one of {', '.join(DEPTH_FORMATS)}, got {self.depth_format!r}")
        if self.resolution not in DEPTH_RESOLUTIONS:
            raise InputError(f"resolution: expected one of {', '.join(DEPTH_RESOLUTIONS)}, got {self.resolution!r}")

    def budget(self, fmt: str) -> int:
        return self.max_points if self.max_points is not None else POINT_BUDGETS[fmt]

    def key(self, fmt: str) -> dict:
        """The options the export of ``fmt`` depends on (an export with other ones is rewritten)."""
        key: dict = {"version": FORMATS_VERSION, "resolution": "network"}
        if fmt in POINT_BUDGETS:
            key["max_points"] = self.budget(fmt)
        if fmt == "depth":
            key.update(depth_format=self.depth_format, resolution=self.resolution)
        return key


@dataclass
class _VideoData:
    """What the writers get of one export unit (a video of one shot, or one shot of a video of
    several): frames (T, H, W, 3) uint8, the fused geometry, (T,) timestamps — T the unit's frames."""

    info: VideoInfo
    frames: np.ndarray
    fused: Geometry
    timestamps: np.ndarray
    provenance: dict
    framing: Framing
    intrinsics_source: np.ndarray  # (T, 3, 3) the fused K in source pixels
    unit: str = ""  # the unit's directory name: the video id, or <video_id>-shot<k>
    shot: Shot | None = None  # the shot of a multi-shot video (None: the whole video)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class _Unit:
    """One export unit of the standard formats: its directory name and frames (``shot`` None: the
    whole video of one shot)."""

    name: str
    shot: Shot | None

    def frames(self, n_frames: int) -> slice:
        return slice(0, n_frames) if self.shot is None else slice(self.shot.start, self.shot.end)


def format_units(store: Store, video_id: str) -> list[_Unit]:
    """The units a fused video can be exported as in the standard formats, before curation: the video
    itself when it has one shot (:func:`geo4d.shots.is_single_shot`), else each reconstructed shot as
    ``<video_id>-shot<k>`` (the Zarr dataset's units, :attr:`storage.curation.ShotPlan.unit`;
    :func:`export_formats` writes those of them the curation keeps)."""
    shots = store.read_shots(video_id)
    if is_single_shot(shots, store.video_info(video_id).n_frames):
        return [_Unit(video_id, None)]
    return [_Unit(f"{video_id}-shot{s.index}", s) for s in shots if s.skipped is None]


def _unit_data(v: _VideoData, unit: _Unit) -> _VideoData:
    """The frames of ``unit`` of the whole video's data (the shot's world frame is its first frame
    already: each shot is fused on its own); provenance names the shot."""
    if unit.shot is None:
        return replace(v, unit=unit.name)
    sl, g, sh = unit.frames(v.info.n_frames), v.fused, unit.shot
    part = Geometry(g.depth[sl], g.valid[sl], g.intrinsics[sl], g.world_from_cam[sl],
                    points=None if g.points is None else g.points[sl],
                    confidence=None if g.confidence is None else g.confidence[sl], fps=g.fps, meta=g.meta)
    prov = {**v.provenance, "shot": sh.index, "shot_start": sh.start, "shot_end": sh.end}
    return replace(v, frames=v.frames[sl], fused=part, timestamps=v.timestamps[sl], provenance=prov,
                   intrinsics_source=v.intrinsics_source[sl], unit=unit.name, shot=sh)


def _provenance(store: Store, vid: str, rec: dict) -> dict:
    """Where the geometry came from: the predictor (windows record) and the fused result."""
    windows = store.stage_record(vid, "windows") or {}
    name = windows.get("predictor") or ((windows.get("parameters") or {}).get("predictor") or {}).get("kind")
    out = {"video_id": vid, "predictor": name or "unknown", "fused_finished_at": rec.get("finished_at"),
           "conventions": EXPORT_CONVENTIONS}
    if str(name or "").startswith("synthetic"):
        out["note"] = _SYNTHETIC_NOTE
    return out


def _read_video(store: Store, vid: str, rec: dict) -> _VideoData:
    """The video's frames and fused geometry at the store's (network) resolution."""
    info = store.video_info(vid)
    fused = store.read_fused(vid)
    frames = store.read_frames(vid)
    if frames.shape[:3] != fused.depth.shape:
        raise StoreError(f"{store.location}: video {vid}: frames {frames.shape[:3]} and fused depth "
                         f"{fused.depth.shape} differ in size")
    times = frame_timestamps(info.n_frames, info.fps, store.frame_times(vid))
    return _VideoData(info, frames, fused, times, _provenance(store, vid, rec), store.framing(vid),
                      store.read_intrinsics_source(vid))


def _cloud(v: _VideoData, budget: int) -> Cloud:
    g = v.fused
    return select_cloud(g.points, v.frames, g.valid, g.confidence, budget)


def _comments(v: _VideoData) -> list[str]:
    p = v.provenance
    shot = f" shot {p['shot']} (frames {p['shot_start']}-{p['shot_end'] - 1})" if "shot" in p else ""  # ASCII: PLY
    return [f"geo4d export of video {p['video_id']}{shot} (fused {p['fused_finished_at']})", f"predictor: {p['predictor']}"] \
        + ([p["note"]] if "note" in p else []) + [f"conventions: {p['conventions']}"]


_UNITS = "the reconstruction's units (one scale per video, not metric unless the reconstruction is)"


def _write_colmap(v: _VideoData, d: Path, opts: ExportOptions) -> dict:
    from geo4d.formats.colmap import write_colmap

    c = _cloud(v, opts.budget("colmap"))
    return write_colmap(d, v.frames, v.fused.intrinsics, v.fused.world_from_cam, c.points, c.colors)


def _write_nerfstudio(v: _VideoData, d: Path, opts: ExportOptions) -> dict:
    from geo4d.formats.nerfstudio import write_nerfstudio

    g, c = v.fused, _cloud(v, opts.budget("nerfstudio"))
    return write_nerfstudio(d, v.frames, g.intrinsics, g.world_from_cam, depth=g.depth, valid=g.valid,
                            points=c.points, colors=c.colors, extras=v.provenance)


def _write_tum(v: _VideoData, d: Path, opts: ExportOptions) -> dict:
    from geo4d.formats.tum import write_tum

    header = "\n".join(_comments(v) + ["timestamp tx ty tz qx qy qz qw (camera-to-world, seconds)"])
    return write_tum(d, v.timestamps, v.fused.world_from_cam, header)


def _write_ply(v: _VideoData, d: Path, opts: ExportOptions) -> dict:
    from geo4d.formats.ply import write_ply

    c = _cloud(v, opts.budget("ply"))
    n = write_ply(d / "points.ply", c.points, c.colors, comments=_comments(v))
    return {"points": n, "file": "points.ply", "min_confidence": c.min_confidence}


def _write_glb(v: _VideoData, d: Path, opts: ExportOptions) -> dict:
    from geo4d.formats.glb import write_glb

    g, c = v.fused, _cloud(v, opts.budget("glb"))
    out = write_glb(d / "scene.glb", c.points, c.colors, g.intrinsics, g.world_from_cam, (v.info.height, v.info.width),
                    extras=v.provenance)
    return {**out, "file": "scene.glb"}


def _write_depth(v: _VideoData, d: Path, opts: ExportOptions) -> dict:
    from geo4d.formats.depth import write_depth_npz, write_depth_pngs

    g = v.fused
    depth, confidence, K = np.where(g.valid, g.depth, 0.0).astype(np.float32), g.confidence, g.intrinsics
    if opts.resolution == "source":
        depth, confidence = depth_to_source(depth, v.framing), nearest_to_source(confidence, v.framing)
        K = v.intrinsics_source
    where = {"resolution": opts.resolution, "size": list(depth.shape[1:])}
    if opts.depth_format == "npz":
        return {**write_depth_npz(d, depth, confidence, K, g.world_from_cam), **where}
    side = write_depth_pngs(d, depth, depth > 0, _UNITS, extras={**v.provenance, **where,
                                                                 "intrinsics": K.tolist()})
    return {"frames": side["frames"], "scale": side["scale"], **where}


_WRITERS: dict[str, Callable[[_VideoData, Path, ExportOptions], dict]] = {
    "colmap": _write_colmap, "nerfstudio": _write_nerfstudio, "tum": _write_tum, "ply": _write_ply,
    "glb": _write_glb, "depth": _write_depth}


def _publish(tmp: Path, dest: Path) -> None:
    """Replace ``dest`` by the complete ``tmp``: a reader sees the old export or the new one, never a
    partial one (at most an instant with neither)."""
    old = dest.with_name(dest.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)


def _write_format(v: _VideoData, fmt: str, out: Path, opts: ExportOptions) -> tuple[Path, dict]:
    """Stage ``OUTDIR/<fmt>/<unit>.partial``, write the format and its sidecar, rename it into place."""
    dest = out / fmt / (v.unit or v.info.video_id)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    summary = _WRITERS[fmt](v, tmp, opts)
    i = v.info
    sidecar = {"format": fmt, **v.provenance, "source": i.source, "n_frames": v.n_frames, "height": i.height,
               "width": i.width, "fps": i.fps, "options": opts.key(fmt), "summary": summary,
               "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2, default=float))
    _publish(tmp, dest)
    return dest, summary


def _kept(out: Path, fmt: str, unit: str, rec: dict, opts: ExportOptions) -> bool:
    """Whether ``OUTDIR/<fmt>/<unit>`` was exported from the same fused result with the same options."""
    try:
        side = json.loads((out / fmt / unit / SIDECAR).read_text())
    except (OSError, ValueError):
        return False
    return side.get("fused_finished_at") == rec.get("finished_at") and side.get("options") == opts.key(fmt)


def _describe(summary: dict) -> str:
    """A few words on what was written (for the progress line)."""
    parts = [f"{summary[k]} {k}" for k in ("images", "frames", "poses", "cameras", "points")
             if summary.get(k) is not None]
    if summary.get("scale"):
        parts.append(f"scale {summary['scale']:.6g}")
    return ", ".join(parts)


def export_formats(store: Store, outdir: str | Path, formats: list[str], video_ids: list[str] | None = None,
                   overwrite: bool = False, options: ExportOptions | None = None,
                   progress: Callable[[str], None] | None = None,
                   checked: dict[str, str | None] | None = None, curation: Curation | None = None) -> list[dict]:
    """Export the shots of the fused videos (or of ``video_ids``) that ``curation`` keeps (default:
    :class:`storage.curation.Curation`, the default filter — the plan of
    :func:`storage.curation.plan_shots`, the same as the Zarr dataset's and the webdataset's) in each
    of ``formats`` (not ``zarr``: see :func:`export_dataset`) to ``OUTDIR/<format>/<unit>/`` per kept
    shot (:attr:`storage.curation.ShotPlan.unit`: the video id for a video of one shot, else
    ``<video_id>-shot<k>``); one progress line per unit and format, one per dropped shot.

    Like the dataset: videos not fused are skipped; an export from the same fused result with the same
    options is kept unless ``overwrite``; a damaged video (:func:`damage_reason`, ``checked`` as there)
    is skipped and nothing of it written (an earlier export of it stays as it was). A shot the
    curation drops is not written, and an earlier export of it (a directory with an ``export.json``)
    is removed.

    Returns:
        one row per planned shot (or video not fused) and format: ``video_id``, ``unit`` (its directory
        name), ``shot`` (None for a video of one shot), ``format``, ``status`` (exported, kept,
        dropped, not fused, damaged), ``path`` (or None), ``reason`` (damaged, dropped: why),
        ``summary`` (exported: what was written).
    """
    say, opts, out = progress or (lambda _m: None), options or ExportOptions(), Path(outdir)
    unknown = [f for f in formats if f not in _WRITERS]
    if unknown:
        raise InputError(f"--format: {unknown[0]!r} is not a per-video format (choose from {', '.join(_WRITERS)})")
    plans, not_fused = plan_shots(store, _chosen_videos(store, video_ids), curation or Curation(),
                                  lambda v: _damage(store, v, checked))
    rows: list[dict] = []
    for vid in not_fused:
        for fmt in formats:
            say(f"skip {vid} {fmt}: fuse stage not complete")
            rows.append(_row(vid, fmt, "not fused"))
    for vid in dict.fromkeys(p.video_id for p in plans):
        rows += _export_video_plans(store, [p for p in plans if p.video_id == vid], formats, out, opts, overwrite, say)
    return rows


def _plan_unit(p: ShotPlan) -> _Unit:
    """The export unit of a planned shot (``shot`` None: the whole video of one shot)."""
    return _Unit(p.unit, Shot(p.shot, p.start, p.end) if p.multi else None)


def _export_video_plans(store: Store, plans: list[ShotPlan], formats: list[str], out: Path, opts: ExportOptions,
                        overwrite: bool, say: Callable[[str], None]) -> list[dict]:
    """The planned shots of one video in every format: damaged (all skipped), dropped by the curation
    (not written; an earlier export removed), kept from an earlier export, or written (read once)."""
    vid, rec = plans[0].video_id, plans[0].fuse_record
    rows, todo = [], []
    for p in plans:
        unit = _plan_unit(p)
        if p.reason is not None and p.reason.startswith("damaged: "):
            for fmt in formats:
                say(f"skip {unit.name} {fmt}: damaged, not exported: {p.reason.removeprefix('damaged: ')}")
                rows.append(_row(vid, fmt, "damaged", reason=p.reason, unit=unit))
        elif p.reason is not None:
            rows += _drop_unit(out, vid, formats, unit, p.reason, say)
        else:
            for fmt in formats:
                if not overwrite and _kept(out, fmt, unit.name, rec, opts):
                    say(f"keep {unit.name} {fmt}: already exported from the same fused result → {out / fmt / unit.name}")
                    rows.append(_row(vid, fmt, "kept", out / fmt / unit.name, unit=unit))
                else:
                    todo.append((unit, fmt))
    if todo:
        rows += _export_video_formats(store, vid, rec, todo, out, opts, say)
    return rows


def _drop_unit(out: Path, vid: str, formats: list[str], unit: _Unit, reason: str,
               say: Callable[[str], None]) -> list[dict]:
    """A shot the curation drops: one line, no format written; an earlier export of it (a directory
    with our ``export.json``) is removed, so each format holds exactly the kept shots."""
    say(f"drop {unit.name}: {reason} (not written in {', '.join(formats)})")
    rows = []
    for fmt in formats:
        dest = out / fmt / unit.name
        if (dest / SIDECAR).is_file():
            old = dest.with_name(dest.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            dest.rename(old)  # gone from its name at once, then deleted
            shutil.rmtree(old)
            say(f"  removed the earlier {fmt} export of {unit.name} ({dest})")
        rows.append(_row(vid, fmt, "dropped", reason=reason, unit=unit))
    return rows


def _row(vid: str, fmt: str, status: str, path: Path | None = None, reason: str | None = None,
         summary: dict | None = None, unit: _Unit | None = None) -> dict:
    return {"video_id": vid, "format": fmt, "status": status, "path": str(path) if path else None, "reason": reason,
            "summary": summary, "unit": unit.name if unit else vid,
            "shot": unit.shot.index if unit and unit.shot else None}


def _export_video_formats(store: Store, vid: str, rec: dict, todo: list[tuple[_Unit, str]], out: Path,
                          opts: ExportOptions, say: Callable[[str], None]) -> list[dict]:
    """Read ``vid`` once (its damage was checked by the plan), write each (unit, format) of ``todo``
    (or skip them all as damaged when a chunk went bad since the check)."""
    data, reason = None, None
    try:
        data = _read_video(store, vid, rec)
    except StoreError as exc:  # damaged between the check and the read
        reason = str(exc)
    rows = []
    for unit, fmt in todo:
        if data is None:
            say(f"skip {unit.name} {fmt}: damaged, not exported: {reason}")
            rows.append(_row(vid, fmt, "damaged", reason=f"damaged: {reason}", unit=unit))
            continue
        part = _unit_data(data, unit)
        dest, summary = _write_format(part, fmt, out, opts)
        note = " (SYNTHETIC predictor)" if "note" in part.provenance else ""
        say(f"exported {unit.name} {fmt}: {_describe(summary)}{note} → {dest}")
        rows.append(_row(vid, fmt, "exported", dest, summary=summary, unit=unit))
    return rows
