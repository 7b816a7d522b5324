"""The reconstruction store: one Zarr v3 group holding every video's frames, per-window modalities,
fused geometry and per-stage records. The layout is a contract documented in ``docs/store.md``;
this module is the only code that knows it.

Concurrency model (see docs/orchestration.md): one writer per video at a time; different videos may
be written concurrently (each video's attributes live in its own ``zarr.json``). Per-window
completion is recorded in the ``windows/done`` array (one chunk per window, written after that
window's data), never in attributes, so an interrupted windows stage resumes window by window.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync

from geo4d.errors import StoreError
from geo4d.framing import Framing
from geo4d.fusion.depth import DepthSource
from geo4d.geometry import Geometry
from geo4d.predictor import MODALITIES, WindowPrediction
from geo4d.shots import Shot, shots_from_records, single_shot

__all__ = [
    "Store",
    "STAGES",
    "FUSED_ARRAYS",
    "VideoInfo",
    "video_id_for",
    "valid_video_id",
    "content_hash",
    "stage_fingerprint",
    "round_mantissa",
    "require_group",
    "WINDOW_MANTISSA_BITS",
    "FUSED_MANTISSA_BITS",
]

STORE_FORMAT = "geo4d-store"
#: Format 2: a crc32c checksum on every chunk, every chunk written (a missing one is damage), window
#: modalities rounded to :data:`WINDOW_MANTISSA_BITS` and fused per-pixel maps to
#: :data:`FUSED_MANTISSA_BITS`, compressed with Blosc zstd + bit shuffle.
#: Stores of format 1 (Blosc lz4, no checksums, fill-value chunks skipped) are read as ever.
STORE_VERSION = 2
#: Pipeline stages in order; a stage's record is written only after all its arrays are complete.
STAGES = ("decode", "shots", "windows", "fuse", "evaluate")
#: Names of the fused arrays (``fused/<name>``) and their per-frame trailing shapes.
#: The store's name of :attr:`geo4d.geometry.Geometry.world_from_cam` (kept for format compatibility).
_POSE_KEY = "cam_to_world"
FUSED_ARRAYS = ("depth", "confidence", "intrinsics", _POSE_KEY, "points")
#: Codecs after the array-to-bytes step: compression, then a per-chunk checksum (Zarr v3 ``crc32c``).
_FLOAT_CODECS = (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec())
_FRAME_CODECS = (BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle"), Crc32cCodec())
#: Chunks equal to the fill value are written too, so a chunk's absence always means damage.
_ARRAY_CONFIG = {"write_empty_chunks": True}
#: Array attribute of the arrays written that way (format 2): each of their chunks exists in storage.
EVERY_CHUNK_ATTR = "geo4d_every_chunk_written"
#: Mantissa bits kept (of float32's 23) in the stored window modalities: relative rounding error
#: ≤ 2⁻⁹ (half of bfloat16's, the network's compute precision).
WINDOW_MANTISSA_BITS = 8
#: Mantissa bits kept in the fused per-pixel maps (depth, confidence, points): float16 precision
#: (relative change ≤ 2^-11) with float32 range.
FUSED_MANTISSA_BITS = 10
_ROUNDED_FUSED = ("depth", "confidence", "points")
_VIDEO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

#: The store's group of report figures, ``reports/<video_id>.png`` (written by :mod:`storage.reports`).
REPORTS_GROUP = "reports"


@dataclass(frozen=True)
class VideoInfo:
    """The video attributes every store holds (``videos/<id>`` attrs)."""

    video_id: str
    source: str
    n_frames: int
    height: int
    width: int
    fps: float


def video_id_for(path: str | os.PathLike, digest_bytes: int = 1 << 20) -> str:
    """Stable id of a video file: ``<sanitised stem>-<first 10 hex of sha256(content)>``.

    The hash covers the file size and its first and last ``digest_bytes`` (the whole file when
    smaller), so the id survives renames of the directory, changes when the content changes, and
    costs at most 2 MiB of reading per video.
    """
    p = Path(path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", p.stem).strip("._-") or "video"
    return f"{stem[:80]}-{content_hash(p, digest_bytes)[:10]}"


def content_hash(path: str | Path, digest_bytes: int = 1 << 20) -> str:
    """sha256 hex of a file's size and its first and last ``digest_bytes`` (the whole file when smaller):
    what tells two paths of one video apart from two videos, reading at most 2 MiB."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(digest_bytes))
        if size > 2 * digest_bytes:
            f.seek(size - digest_bytes)
        h.update(f.read(digest_bytes))
    return h.hexdigest()


def valid_video_id(video_id: str) -> bool:
    """Whether ``video_id`` may name ``videos/<id>`` (docs/store.md)."""
    return bool(_VIDEO_ID_RE.match(video_id))


def stage_fingerprint(parameters: Mapping[str, Any]) -> str:
    """Short hash of a stage's parameters (JSON, sorted keys): equal inputs → equal fingerprint."""
    blob = json.dumps(parameters, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def round_mantissa(values: np.ndarray, keep: int = WINDOW_MANTISSA_BITS) -> np.ndarray:
    """float32 ``values`` with all but ``keep`` of the 23 mantissa bits zeroed, rounded to nearest
    (ties to even), so that a lossless compressor packs them tightly; non-finite values are kept.

    The relative change is at most ``2 ** -(keep + 1)``; the result is plain float32 (any reader
    reads it, unlike a rounding codec).

    >>> round_mantissa(np.array([1.0 + 2 ** -10, 3.14159265], np.float32), keep=8).tolist()
    [1.0, 3.140625]
    """
    if not 0 < keep < 23:
        raise ValueError(f"keep: expected 1…22 mantissa bits, got {keep}")
    x = np.ascontiguousarray(values, dtype=np.float32)
    bits = x.view(np.uint32)
    drop = np.uint32(23 - keep)
    odd = (bits >> drop) & np.uint32(1)
    half = np.uint32((1 << (23 - keep - 1)) - 1)
    rounded = ((bits + half + odd) & np.uint32((0xFFFFFFFF << (23 - keep)) & 0xFFFFFFFF)).view(np.float32)
    return np.where(np.isfinite(x), rounded, x)


def require_group(parent: zarr.Group, path: str) -> zarr.Group:
    """``parent[path]`` as a group, created if absent — safe when several writers create it at once.

    Zarr's own ``require_group`` checks and then creates, so of two writers racing on a new group one
    gets ``ContainsGroupError``; here that writer opens the group the other created.
    """
    from zarr.errors import ContainsGroupError

    try:
        return parent.require_group(path)
    except ContainsGroupError:
        return parent[path]


def _create(grp: zarr.Group, name: str, shape: tuple[int, ...], dtype: str, codecs: tuple,
            attributes: Mapping[str, Any] | None = None, chunks: tuple[int, ...] | None = None) -> zarr.Array:
    """A new array of format 2 (one chunk per index of the first axis unless ``chunks``, checksummed,
    every chunk written), replacing any array of that name."""
    chunks = chunks or (1,) + tuple(shape[1:])
    return grp.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=codecs,
                            fill_value=0, overwrite=True, config=_ARRAY_CONFIG,
                            attributes={EVERY_CHUNK_ATTR: True, **(attributes or {})})


def stored_chunk_keys(arr: zarr.Array) -> set[str]:
    """The chunk keys (relative to the array, e.g. ``c/3/0/0``) present in the array's storage."""
    prefix = arr.store_path.path.rstrip("/") + "/" if arr.store_path.path else ""

    async def listing() -> set[str]:
        return {key[len(prefix):] async for key in arr.store_path.store.list_prefix(prefix)}

    return sync(listing()) - {"zarr.json"}


def chunk_coords(arr: zarr.Array) -> list[tuple[int, ...]]:
    """Every chunk's grid coordinates, in order."""
    import itertools

    return list(itertools.product(*(range(n) for n in arr.cdata_shape)))


def missing_chunks(arr: zarr.Array) -> list[tuple[int, ...]]:
    """Coordinates of the chunks absent from storage (read back as fill values)."""
    have = stored_chunk_keys(arr)
    return [c for c in chunk_coords(arr) if arr.metadata.encode_chunk_key(c) not in have]


def every_chunk_written(arr: zarr.Array) -> bool:
    """Whether ``arr`` was written with every chunk stored (format 2), so that a missing chunk is damage."""
    return bool(arr.attrs.get(EVERY_CHUNK_ATTR, False))


def has_checksums(arr: zarr.Array) -> bool:
    """Whether ``arr``'s chunks carry a crc32c checksum."""
    return any(isinstance(c, Crc32cCodec) for c in arr.metadata.codecs)


class Store:
    """A geo4d reconstruction store (Zarr v3 group, local path or fsspec URL such as ``s3://…``).

    Args:
        location: path or URL of the store.
        mode: ``"a"`` (open or create) or ``"r"`` (must exist, read-only).
        storage_options: fsspec options for URLs (e.g. ``{"endpoint_url": ...}`` for S3).

    Raises:
        StoreError: the location exists but is not a geo4d store (not Zarr, Zarr v2, or another layout).
    """

    def __init__(self, location: str | os.PathLike, mode: str = "a", storage_options: dict | None = None):
        self.location = str(location)
        self.mode = mode
        if mode not in ("a", "r"):
            raise ValueError(f"mode: expected 'a' or 'r', got {mode!r}")
        store: Any
        if _is_url(self.location):
            store = zarr.storage.FsspecStore.from_url(
                self.location, storage_options=storage_options or {}, read_only=(mode == "r")
            )
        else:
            path = Path(self.location.removeprefix("file://"))
            self._check_local(path, mode)
            store = str(path)
        try:
            self.root = zarr.open_group(store, mode=mode, zarr_format=3)
        except FileNotFoundError as exc:
            raise StoreError(f"{self.location}: no such store") from exc
        except Exception as exc:  # zarr raises several types for foreign content
            raise StoreError(f"{self.location}: not a readable Zarr v3 store ({exc})") from exc
        self._check_layout()

    # ---- layout checks -------------------------------------------------------------------------
    def _check_local(self, path: Path, mode: str) -> None:
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is a file, not a store directory")
        if path.is_dir():
            if "zarr.json" not in os.listdir(path) and ((path / ".zgroup").exists() or (path / ".zarray").exists()):
                raise StoreError(f"{path}: is a Zarr v2 store; geo4d stores are Zarr v3 (docs/store.md)")
            entries = [e for e in os.listdir(path) if not e.startswith(".")]
            if entries and "zarr.json" not in entries:
                raise StoreError(f"{path}: exists and is not a Zarr store (found {entries[:3]})")
        elif mode == "r":
            raise StoreError(f"{path}: no such store")

    def _check_layout(self) -> None:
        meta = self.root.attrs.get("geo4d_store")
        if meta is not None:
            if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
                raise StoreError(f"{self.location}: attribute geo4d_store is not a geo4d store marker: {meta!r}")
            if int(meta.get("version", 0)) > STORE_VERSION:
                raise StoreError(
                    f"{self.location}: store version {meta.get('version')} is newer than this program's {STORE_VERSION}"
                )
        members = list(self.root.keys())
        foreign = [m for m in members if m not in ("videos",)]
        if "videos" in members and not isinstance(self.root["videos"], zarr.Group):
            raise StoreError(f"{self.location}: 'videos' is an array, expected a group (docs/store.md)")
        if foreign and "videos" not in members:
            raise StoreError(
                f"{self.location}: has another layout (members {foreign[:3]}, no 'videos' group; see docs/store.md)"
            )
        if meta is None and self.mode == "a" and not members:
            self.root.attrs["geo4d_store"] = {"format": STORE_FORMAT, "version": STORE_VERSION}
        if self.mode == "a" and "videos" not in members:
            # Created once here, so concurrent per-video writers never race to create the parent group.
            require_group(self.root, "videos")

    # ---- videos ----------------------------------------------------------------------------------
    def video_ids(self) -> list[str]:
        if "videos" not in self.root:
            return []
        return sorted(k for k, v in self.root["videos"].members() if isinstance(v, zarr.Group))

    def has_video(self, video_id: str) -> bool:
        return video_id in self.video_ids()

    def _video_group(self, video_id: str) -> zarr.Group:
        try:
            grp = self.root[f"videos/{video_id}"]
        except KeyError as exc:
            raise StoreError(f"{self.location}: no video {video_id!r} (have: {', '.join(self.video_ids()) or 'none'})") from exc
        if not isinstance(grp, zarr.Group):
            raise StoreError(f"{self.location}: videos/{video_id} is not a group")
        return grp

    def video_info(self, video_id: str) -> VideoInfo:
        attrs = self._video_group(video_id).attrs.asdict()
        missing = [k for k in ("n_frames", "height", "width") if k not in attrs]
        if missing:
            raise StoreError(f"{self.location}: videos/{video_id} lacks attributes {missing} (docs/store.md)")
        return VideoInfo(
            video_id=video_id,
            source=str(attrs.get("source", "")),
            n_frames=int(attrs["n_frames"]),
            height=int(attrs["height"]),
            width=int(attrs["width"]),
            fps=float(attrs.get("fps", 0.0) or 0.0),
        )

    def ensure_video(self, info: VideoInfo) -> None:
        """Create ``videos/<id>`` with its attributes, or check an existing one agrees."""
        if not _VIDEO_ID_RE.match(info.video_id):
            raise StoreError(f"video id {info.video_id!r}: use letters, digits, '.', '_' or '-' (at most 128)")
        if self.has_video(info.video_id):
            old = self.video_info(info.video_id)
            if (old.n_frames, old.height, old.width) != (info.n_frames, info.height, info.width):
                raise StoreError(
                    f"{self.location}: video {info.video_id} already stored as {old.n_frames}×{old.height}×{old.width}, "
                    f"got {info.n_frames}×{info.height}×{info.width}"
                )
            return
        grp = require_group(self.root, f"videos/{info.video_id}")
        grp.attrs.update(
            {
                "source": info.source,
                "n_frames": info.n_frames,
                "height": info.height,
                "width": info.width,
                "fps": info.fps,
                "stages": {},
            }
        )

    def record_unreadable_video(self, video_id: str, source: str, error: str, run_id: str | None = None) -> None:
        """Record a video that could not even be decoded: ``videos/<id>`` with zero sizes and a failed
        ``decode`` record, so status reports name it. An existing readable video is never replaced."""
        if self.has_video(video_id) and self.video_info(video_id).n_frames > 0:
            self.record_stage(video_id, "decode", "failed", run_id=run_id, error=error)
            return
        self.ensure_video(VideoInfo(video_id, source, 0, 0, 0, 0.0))
        self.record_stage(video_id, "decode", "failed", parameters={"source": source}, run_id=run_id, error=error)

    def record_source_paths(self, video_id: str, paths: list[str]) -> None:
        """Every path the video's content was found under (attribute ``source_paths``; ``source`` is the
        first). Written by the video's one writer, after its decode."""
        grp = self._video_group(video_id)
        if grp.attrs.get("source_paths") != list(paths):
            grp.attrs["source_paths"] = list(paths)

    def delete_video(self, video_id: str) -> None:
        """Remove ``videos/<id>`` and everything under it, and its report figure (:mod:`storage.reports`)."""
        self._video_group(video_id)
        del self.root[f"videos/{video_id}"]
        sync(self.root.store.delete(f"{REPORTS_GROUP}/{video_id}.png"))  # nothing happens when there is none

    def video_array(self, video_id: str, path: str) -> zarr.Array:
        """The array ``videos/<id>/<path>`` (e.g. ``fused/depth``); :class:`StoreError` when absent."""
        grp = self._video_group(video_id)
        parent, _, name = path.rpartition("/")
        if parent:
            if parent not in grp or not isinstance(grp[parent], zarr.Group):
                raise StoreError(f"{self.location}: videos/{video_id}/{parent} is missing (docs/store.md)")
            grp = grp[parent]
        return self._array(grp, name, f"videos/{video_id}/{parent}".rstrip("/"))

    def video_attrs(self, video_id: str) -> dict:
        return self._video_group(video_id).attrs.asdict()

    # ---- stage records ---------------------------------------------------------------------------
    def stage_records(self, video_id: str) -> dict[str, dict]:
        return dict(self._video_group(video_id).attrs.get("stages", {}) or {})

    def stage_record(self, video_id: str, stage: str) -> dict | None:
        return self.stage_records(video_id).get(stage)

    def is_complete(self, video_id: str, stage: str, fingerprint: str | None = None) -> bool:
        """True when the stage's record says complete (and, if given, its fingerprint matches)."""
        rec = self.stage_record(video_id, stage) if self.has_video(video_id) else None
        if not rec or rec.get("status") != "complete":
            return False
        return fingerprint is None or rec.get("fingerprint") == fingerprint

    def record_stage(
        self,
        video_id: str,
        stage: str,
        status: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        error: str | None = None,
        seconds: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict:
        """Write a stage's record (only after all its arrays are complete, for ``complete``)."""
        if stage not in STAGES:
            raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
        if status not in ("complete", "failed"):  # ``damaged`` is set by mark_damaged only
            raise ValueError(f"status: expected 'complete' or 'failed', got {status!r}")
        params = dict(parameters or {})
        rec: dict[str, Any] = {
            "status": status,
            "finished_at": _now(),
            "run_id": run_id,
            "parameters": params,
            "fingerprint": stage_fingerprint(params),
        }
        if error is not None:
            rec["error"] = error
        if seconds is not None:
            rec["seconds"] = round(float(seconds), 4)
        if extra:
            rec.update(extra)
        grp = self._video_group(video_id)
        stages = dict(grp.attrs.get("stages", {}) or {})
        stages[stage] = json.loads(json.dumps(rec, default=str))
        grp.attrs["stages"] = stages
        return stages[stage]

    def mark_damaged(self, video_id: str, damage: Mapping[str, Mapping[str, Any]], checked: list[str]) -> None:
        """Record what :mod:`storage.verify` found in the stages ``checked``: each stage of ``damage``
        (``{stage: {array: {"chunks": [...], "problem": str}}}``) gets status ``damaged`` with
        ``damage`` and ``damaged_at`` (its other keys kept), so that a rerun recomputes it; a checked
        ``damaged`` stage found intact becomes ``complete`` again. One attribute write, only on change."""
        grp = self._video_group(video_id)
        recs = dict(grp.attrs.get("stages", {}) or {})
        new = {}
        for stage, rec in recs.items():
            rec = dict(rec)
            if stage not in checked:
                pass
            elif stage in damage:
                found = json.loads(json.dumps(dict(damage[stage]), default=str))
                if rec.get("status") != "damaged" or rec.get("damage") != found:
                    rec.update(status="damaged", damage=found, damaged_at=_now())
            elif rec.get("status") == "damaged":
                rec["status"] = "complete"
                rec.pop("damage", None)
                rec.pop("damaged_at", None)
            new[stage] = rec
        if new != recs:
            grp.attrs["stages"] = new

    def clear_window_marks(self, video_id: str, windows: list[int]) -> None:
        """Set ``windows/done`` to 0 for ``windows`` (damaged ones): the next windows stage predicts them again."""
        done = self._array(self._video_group(video_id)["windows"], "done", f"{video_id}/windows")
        for g in windows:
            done[int(g)] = 0

    def clear_stages(self, video_id: str, stages: list[str]) -> None:
        """Forget the records of ``stages`` (e.g. downstream stages when an upstream stage reruns)."""
        grp = self._video_group(video_id)
        recs = dict(grp.attrs.get("stages", {}) or {})
        if any(s in recs for s in stages):
            for s in stages:
                recs.pop(s, None)
            grp.attrs["stages"] = recs

    # ---- frames ----------------------------------------------------------------------------------
    def frames_array(self, video_id: str, create: bool = False) -> zarr.Array:
        grp = self._video_group(video_id)
        if create:
            info = self.video_info(video_id)
            return _create(grp, "frames", (info.n_frames, info.height, info.width, 3), "uint8", _FRAME_CODECS)
        return self._array(grp, "frames", video_id)

    def read_frames(self, video_id: str) -> np.ndarray:
        """All frames (T, H, W, 3) uint8; a missing or damaged chunk raises :class:`StoreError`."""
        return self._read_whole(self.frames_array(video_id), f"videos/{video_id}/frames")

    # A streaming decode writes ``videos/<id>/frames.partial`` block by block; only
    # :meth:`commit_frames` makes it ``frames``, so a decode that fails partway leaves the previous
    # frames and stage records as they were (after :meth:`discard_frames`).
    _STAGED = "frames.partial"
    #: Attribute of a video group created only to hold a decode in progress (removed on discard).
    _STAGING_MARK = "decoding"

    def write_frames(self, video_id: str, start: int, block: np.ndarray, *, source: str = "", fps: float = 0.0,
                     capacity: int = 0) -> None:
        """Write frames ``start … start + len(block) − 1`` of a decode in progress (staged, not yet ``frames``).

        At ``start`` 0 the staging array is created (replacing any leftover), with room for
        ``capacity`` frames, and so is the video's group if it is new (``source``, ``fps`` go to its
        attributes); it grows as blocks arrive, since a video's frame count is known only at its end.
        """
        block = np.asarray(block, dtype=np.uint8)
        n, H, W = block.shape[:3]
        if start == 0:
            if not self.has_video(video_id):
                self.ensure_video(VideoInfo(video_id, source, 0, H, W, fps))
                self._video_group(video_id).attrs[self._STAGING_MARK] = True
            arr = self._create_frames(self._video_group(video_id), self._STAGED, max(capacity, n), H, W)
        else:
            arr = self._array(self._video_group(video_id), self._STAGED, video_id)
        if arr.shape[1:3] != (H, W):
            raise ValueError(f"frames: block of {H}×{W} frames, the decode in progress has {arr.shape[1]}×{arr.shape[2]}")
        if arr.shape[0] < start + n:
            arr.resize((max(2 * arr.shape[0], start + n), H, W, 3))
        arr[start : start + n] = block

    def _create_frames(self, grp: zarr.Group, name: str, n_frames: int, height: int, width: int) -> zarr.Array:
        """A frames array of the layout of docs/store.md (uint8, one chunk per frame)."""
        return _create(grp, name, (n_frames, height, width, 3), "uint8", _FRAME_CODECS)

    def commit_frames(self, info: VideoInfo, clear: list[str], *, times: np.ndarray | None = None,
                      framing: Framing | None = None) -> None:
        """Make the staged frames (:meth:`write_frames`) the video's ``frames``: ``info.n_frames`` of them.

        A video stored with another shape (or created for this decode) is recomputed from scratch:
        its other arrays are removed and its attributes rewritten from ``info``. Otherwise the
        records of ``clear`` are forgotten and only ``frames`` is replaced. ``times`` (T,) seconds
        become ``frames_pts``; ``framing`` (:class:`geo4d.framing.Framing`) the ``framing`` attribute.
        """
        grp = self._video_group(info.video_id)
        staged = self._array(grp, self._STAGED, info.video_id)
        if staged.shape[0] < info.n_frames:
            raise StoreError(f"{self.location}: video {info.video_id}: {staged.shape[0]} frames staged, "
                             f"committing {info.n_frames}")
        staged.resize((info.n_frames, info.height, info.width, 3))
        attrs = grp.attrs.asdict()
        shape = (attrs.get("n_frames"), attrs.get("height"), attrs.get("width"))
        if attrs.get(self._STAGING_MARK) or shape != (info.n_frames, info.height, info.width):
            grp.attrs.put({"source": info.source, "n_frames": info.n_frames, "height": info.height,
                           "width": info.width, "fps": info.fps, "stages": {}})
            for name in [k for k, _ in grp.members() if k != self._STAGED]:
                del grp[name]
        else:
            self.clear_stages(info.video_id, clear)
            if "frames" in grp:
                del grp["frames"]
        self._move_node(f"videos/{info.video_id}/{self._STAGED}", f"videos/{info.video_id}/frames")
        self._write_timing(grp, info.n_frames, times, framing)

    def _write_timing(self, grp: zarr.Group, n_frames: int, times: np.ndarray | None, framing: Framing | None) -> None:
        if self.PTS in grp:
            del grp[self.PTS]
        if times is not None:
            times = np.asarray(times, dtype=np.float64)
            if times.shape != (n_frames,):
                raise ValueError(f"times: expected shape ({n_frames},), got {times.shape}")
            arr = _create(grp, self.PTS, (n_frames,), "float64", (Crc32cCodec(),), chunks=(max(1, n_frames),))
            arr[:] = times
        grp.attrs.update({"framing": framing.to_dict() if framing is not None else None})

    #: Per-frame presentation times in seconds, as the container gives them (variable frame rate kept).
    PTS = "frames_pts"

    def frame_times(self, video_id: str) -> np.ndarray | None:
        """(T,) presentation time of each stored frame in seconds (None: a store from before timestamps)."""
        grp = self._video_group(video_id)
        if self.PTS not in grp:
            return None
        return self._read_whole(self._array(grp, self.PTS, video_id), f"videos/{video_id}/{self.PTS}")

    def framing(self, video_id: str) -> Framing:
        """How the stored frames relate to the upright source frames (:mod:`geo4d.framing`); frames of
        a store from before framing count as the source itself."""
        d = self._video_group(video_id).attrs.get("framing")
        if d:
            return Framing.from_dict(d)
        info = self.video_info(video_id)
        return Framing.identity(info.height, info.width)

    def discard_frames(self, video_id: str) -> None:
        """Remove a decode in progress: the staging array, and the video's group if it was made for it."""
        if not self.has_video(video_id):
            return
        grp = self._video_group(video_id)
        if grp.attrs.get(self._STAGING_MARK):
            self.delete_video(video_id)
        elif self._STAGED in grp:
            del grp[self._STAGED]

    def _move_node(self, src: str, dst: str) -> None:
        """Rename an array (``src`` → ``dst``, which must not exist): a directory rename on a local
        store; elsewhere its keys are copied one by one, then removed."""
        from zarr.core.buffer import default_buffer_prototype

        store = self.root.store
        if isinstance(store, zarr.storage.LocalStore):
            os.replace(Path(store.root) / src, Path(store.root) / dst)
            return

        async def copy() -> None:
            keys = [k async for k in store.list_prefix(f"{src}/")]
            for key in sorted(keys, key=lambda k: k.endswith("zarr.json")):  # metadata last
                await store.set(dst + key[len(src):], await store.get(key, prototype=default_buffer_prototype()))
            await store.delete_dir(src)

        sync(copy())

    # ---- shots -----------------------------------------------------------------------------------
    #: Video attribute holding the shots stage's result: ``{"shots": [Shot dicts], "boundaries": [[frame, kind]]}``.
    SHOTS_ATTR = "shots"

    def write_shots(self, video_id: str, shots: list[Shot], boundaries: list) -> None:
        """Store the video's shots (attribute ``shots``; the stage record is written after it)."""
        grp = self._video_group(video_id)
        grp.attrs[self.SHOTS_ATTR] = json.loads(json.dumps(
            {"shots": [s.to_dict() for s in shots], "boundaries": [list(b) for b in boundaries]}, default=str))

    def read_shots(self, video_id: str) -> list[Shot]:
        """The video's shots when its shots stage is complete; otherwise (no shots stage, ``--shots
        off`` stores, stores from before shots) the one shot of every frame."""
        info = self.video_info(video_id)
        got = self._video_group(video_id).attrs.get(self.SHOTS_ATTR)
        if not self.is_complete(video_id, "shots") or not got:
            return single_shot(info.n_frames)
        try:
            return shots_from_records(got["shots"], info.n_frames)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.location}: videos/{video_id} attribute shots is malformed ({exc})") from exc

    #: ``fused/shot``: int16 (T,) each frame's shot index, −1 for frames of skipped shots.
    SHOT_INDEX = "shot"
    #: ``fused`` group attribute: the quality scores of each shot (:mod:`geo4d.quality`), a list of dicts.
    SCORES_ATTR = "shot_scores"

    def write_shot_scores(self, video_id: str, scores: list[Mapping[str, Any]]) -> None:
        """Store each shot's quality scores (``fused`` attribute ``shot_scores``) with the fused result."""
        fg = self._video_group(video_id)["fused"]
        fg.attrs[self.SCORES_ATTR] = json.loads(json.dumps([dict(s) for s in scores], default=_json_number))

    def read_shot_scores(self, video_id: str) -> list[dict]:
        """Each shot's quality scores (empty for results fused before scores existed)."""
        grp = self._video_group(video_id)
        if "fused" not in grp:
            return []
        return list(grp["fused"].attrs.get(self.SCORES_ATTR) or [])

    def read_frame_shots(self, video_id: str) -> np.ndarray:
        """(T,) int16 shot index of each fused frame (−1: a skipped shot's frame); results fused before
        shots: all 0."""
        grp = self._video_group(video_id)
        if "fused" in grp and self.SHOT_INDEX in grp["fused"]:
            where = f"videos/{video_id}/fused/{self.SHOT_INDEX}"
            return self._read_whole(self._array(grp["fused"], self.SHOT_INDEX, video_id), where).astype(np.int16)
        return np.zeros(self.video_info(video_id).n_frames, dtype=np.int16)

    # ---- windows ---------------------------------------------------------------------------------
    def prepare_windows(
        self, video_id: str, starts: list[int], window_size: int, stride: int, predictor: str, fingerprint: str,
        parameters: Mapping[str, Any] | None = None, pointmap_z_offset: bool | None = None,
    ) -> np.ndarray:
        """Create the windows arrays (or keep them when layout and fingerprint match).

        ``parameters`` (what the fingerprint was computed from) are kept in the group's attributes so a
        later run of other settings can name what differs; ``pointmap_z_offset`` (whether the
        predictor's point maps carry an unknown z offset, :meth:`windows_pointmap_z_offset`) too,
        when given. Returns the per-window completion flags (G,) bool — True for windows already stored.
        """
        info = self.video_info(video_id)
        grp = self._video_group(video_id)
        starts = [int(s) for s in starts]
        if "windows" in grp:
            wg = grp["windows"]
            a = wg.attrs.asdict()
            same = (
                a.get("starts") == starts
                and int(a.get("window_size", -1)) == window_size
                and a.get("fingerprint") == fingerprint
                and all(n in wg for n in (*MODALITIES, "done"))
            )
            if same:
                return np.asarray(wg["done"][:]).astype(bool)
        wg = require_group(grp, "windows")
        G, V, H, W = len(starts), window_size, info.height, info.width
        shapes = {
            "pointmap": (G, V, H, W, 3),
            "pointmap_conf": (G, V, H, W),
            "ray_dir": (G, V, H, W, 3),
            "ray_moment": (G, V, H, W, 3),
            "disparity": (G, V, H, W),
        }
        for name, shape in shapes.items():
            _create(wg, name, shape, "float32", _FLOAT_CODECS, {"mantissa_bits": WINDOW_MANTISSA_BITS})
        _create(wg, "done", (G,), "uint8", _FRAME_CODECS)
        wg.attrs.update(
            {"starts": starts, "window_size": window_size, "stride": stride, "predictor": predictor,
             "fingerprint": fingerprint, "parameters": dict(parameters or {})}
        )
        if pointmap_z_offset is not None:
            wg.attrs["pointmap_z_offset"] = bool(pointmap_z_offset)
        return np.zeros(G, dtype=bool)

    def _windows_group(self, video_id: str) -> zarr.Group:
        grp = self._video_group(video_id)
        if "windows" not in grp:
            raise StoreError(f"{self.location}: video {video_id} has no windows group (run the windows stage first)")
        return grp["windows"]

    def windows_pointmap_z_offset(self, video_id: str) -> bool:
        """Whether the stored point maps carry an unknown per-window z offset: the windows group's
        ``pointmap_z_offset`` attribute, else (stores written before it, or by other tools) True
        exactly when the ``predictor`` attribute is ``"geo4d"`` or absent — the network's maps carry
        one (docs/store.md)."""
        attrs = self._windows_group(video_id).attrs.asdict()
        if "pointmap_z_offset" in attrs:
            return bool(attrs["pointmap_z_offset"])
        return attrs.get("predictor", "geo4d") == "geo4d"

    def windows_progress(self, video_id: str) -> dict | None:
        """What the windows group holds so far: ``{"fingerprint", "parameters", "done": windows stored}``,
        or None without a windows group (or without per-window markers)."""
        grp = self._video_group(video_id)
        if "windows" not in grp or "done" not in grp["windows"]:
            return None
        wg = grp["windows"]
        a = wg.attrs.asdict()
        return {"fingerprint": a.get("fingerprint"), "parameters": a.get("parameters"),
                "done": int(np.asarray(wg["done"][:]).sum())}

    def write_window(self, video_id: str, g: int, prediction: WindowPrediction) -> None:
        """Store window ``g``'s modalities (rounded to :data:`WINDOW_MANTISSA_BITS`), then mark it done
        (the marker is written last)."""
        wg = self._video_group(video_id)["windows"]
        for name, arr in prediction.as_dict().items():
            self._array(wg, name, f"{video_id}/windows")[g] = round_mantissa(np.asarray(arr, dtype=np.float32))
        self._array(wg, "done", f"{video_id}/windows")[g] = 1

    def windows(self, video_id: str) -> tuple[dict[str, zarr.Array], list[int], int]:
        """The stored windows: ``({modality: zarr.Array (G,…)}, starts, window_size)``.

        Works for stores written by other tools that follow docs/store.md (no ``done`` array needed).
        """
        wg = self._windows_group(video_id)
        attrs = wg.attrs.asdict()
        for key in ("starts", "window_size"):
            if key not in attrs:
                raise StoreError(f"{self.location}: videos/{video_id}/windows lacks attribute {key!r} (docs/store.md)")
        starts = [int(s) for s in attrs["starts"]]
        V = int(attrs["window_size"])
        arrays = {name: self._array(wg, name, f"{video_id}/windows") for name in MODALITIES}
        for name, arr in arrays.items():
            if arr.shape[0] != len(starts) or arr.shape[1] != V:
                raise StoreError(
                    f"{self.location}: videos/{video_id}/windows/{name}: expected {len(starts)} windows of {V} frames, "
                    f"got shape {arr.shape}"
                )
        if "done" in wg:
            done = np.asarray(wg["done"][:]).astype(bool)
            if not done.all():
                raise StoreError(
                    f"{self.location}: video {video_id}: windows {np.flatnonzero(~done).tolist()[:8]} are incomplete"
                )
        for name, arr in arrays.items():  # fusion never reads fill values in place of lost chunks
            self._require_chunks(arr, f"videos/{video_id}/windows/{name}")
        return arrays, starts, V

    # ---- fused -----------------------------------------------------------------------------------
    def write_fused(self, video_id: str, geometry: Geometry, diagnostics: Mapping[str, Any] | None = None,
                    intrinsics_source: np.ndarray | None = None, depth_source: np.ndarray | None = None,
                    shot_index: np.ndarray | None = None) -> None:
        """Write the fused geometry as ``fused/<name>`` (:data:`FUSED_ARRAYS`, float32, chunked per frame).

        ``geometry`` needs ``confidence`` and ``points``; ``diagnostics`` go to the group's attrs;
        ``intrinsics_source`` (T, 3, 3), K in the source video's pixels, to ``fused/intrinsics_source``;
        ``depth_source`` (T, H, W) uint8, which modality gave each pixel its depth
        (:class:`geo4d.fusion.DepthSource` codes), to ``fused/depth_source``; ``shot_index`` (T,)
        each frame's shot (−1 skipped) to ``fused/shot``.
        """
        arrays = _fused_arrays(geometry)
        info = self.video_info(video_id)
        source = self._checked_depth_source(info, depth_source)  # before anything is written
        fg = require_group(self._video_group(video_id), "fused")
        for name in FUSED_ARRAYS:
            arr = np.asarray(arrays[name], dtype=np.float32)
            if arr.shape[0] != info.n_frames:
                raise ValueError(f"fused/{name}: expected {info.n_frames} frames, got shape {arr.shape}")
            if name in _ROUNDED_FUSED:  # per-pixel maps rounded; K and poses exact
                _create(fg, name, arr.shape, "float32", _FLOAT_CODECS, {"mantissa_bits": FUSED_MANTISSA_BITS})[:] = \
                    round_mantissa(arr, FUSED_MANTISSA_BITS)
            else:
                _create(fg, name, arr.shape, "float32", _FLOAT_CODECS)[:] = arr
        if intrinsics_source is not None:
            _create(fg, self.SOURCE_K, (info.n_frames, 3, 3), "float64", _FLOAT_CODECS)[:] = intrinsics_source
        elif self.SOURCE_K in fg:
            del fg[self.SOURCE_K]
        if source is not None:
            _create(fg, self.DEPTH_SOURCE, source.shape, "uint8", _FLOAT_CODECS)[:] = source
        elif self.DEPTH_SOURCE in fg:
            del fg[self.DEPTH_SOURCE]
        self._write_shot_index(fg, info, shot_index)
        if diagnostics:
            fg.attrs.update(json.loads(json.dumps({"diagnostics": dict(diagnostics)}, default=str)))

    def _write_shot_index(self, fg: zarr.Group, info: VideoInfo, shot_index: np.ndarray | None) -> None:
        if shot_index is None:
            if self.SHOT_INDEX in fg:
                del fg[self.SHOT_INDEX]
            return
        idx = np.asarray(shot_index)
        if idx.shape != (info.n_frames,):
            raise ValueError(f"fused/{self.SHOT_INDEX}: expected shape ({info.n_frames},), got {idx.shape}")
        _create(fg, self.SHOT_INDEX, idx.shape, "int16", _FRAME_CODECS, chunks=(max(1, info.n_frames),))[:] = idx

    #: ``fused/intrinsics_source``: the fused K in the source video's pixels (upright, square pixels).
    SOURCE_K = "intrinsics_source"
    #: ``fused/depth_source``: uint8 (T, H, W), the modality that gave each pixel its depth.
    DEPTH_SOURCE = "depth_source"

    def _checked_depth_source(self, info: VideoInfo, depth_source: np.ndarray | None) -> np.ndarray | None:
        """``depth_source`` as uint8 (T, H, W) :class:`DepthSource` codes (None stays None);
        ValueError naming ``fused/depth_source`` for another shape or an unknown code."""
        if depth_source is None:
            return None
        src = np.asarray(depth_source)
        exp = (info.n_frames, info.height, info.width)
        if src.shape != exp:
            raise ValueError(f"fused/{self.DEPTH_SOURCE}: expected shape {exp}, got {src.shape}")
        codes = [int(c) for c in DepthSource]
        if not np.isin(src, codes).all():
            raise ValueError(f"fused/{self.DEPTH_SOURCE}: values must be codes {codes} (geo4d.fusion.DepthSource)")
        return src.astype(np.uint8)

    def read_depth_source(self, video_id: str) -> np.ndarray:
        """(T, H, W) uint8 :class:`geo4d.fusion.DepthSource` codes of the fused depth. Stores fused
        before the array existed held point-map depth only: derived as 1 (point map) where the fused
        confidence is > 0, else 0 (none)."""
        grp = self._video_group(video_id)
        if "fused" not in grp:
            raise StoreError(f"{self.location}: video {video_id} has no fused group (run the fuse stage first)")
        fg = grp["fused"]
        if self.DEPTH_SOURCE in fg:
            where = f"videos/{video_id}/fused/{self.DEPTH_SOURCE}"
            return self._read_whole(self._array(fg, self.DEPTH_SOURCE, video_id), where)
        conf = self._read_whole(self._array(fg, "confidence", f"{video_id}/fused"),
                                f"videos/{video_id}/fused/confidence")
        return np.where(conf > 0, np.uint8(DepthSource.POINTMAP), np.uint8(DepthSource.NONE))

    def read_intrinsics_source(self, video_id: str) -> np.ndarray:
        """(T, 3, 3) fused intrinsics in source pixels (stores without the array: by the framing)."""
        fg = self._video_group(video_id)["fused"]
        if self.SOURCE_K in fg:
            return self._read_whole(self._array(fg, self.SOURCE_K, video_id), f"videos/{video_id}/fused/{self.SOURCE_K}")
        return self.framing(video_id).intrinsics_to_source(self.read_fused(video_id).intrinsics)

    def read_fused(self, video_id: str) -> Geometry:
        """The fused geometry (float32 as stored; ``valid`` where confidence > 0; ``meta``: the group's attrs)."""
        grp = self._video_group(video_id)
        if "fused" not in grp:
            raise StoreError(f"{self.location}: video {video_id} has no fused group (run the fuse stage first)")
        fg = grp["fused"]
        a = {name: self._read_whole(self._array(fg, name, f"{video_id}/fused"), f"videos/{video_id}/fused/{name}")
             for name in FUSED_ARRAYS}
        return Geometry(a["depth"], a["confidence"] > 0, a["intrinsics"], a[_POSE_KEY], points=a["points"],
                        confidence=a["confidence"], meta=fg.attrs.asdict())

    # ---- helpers ---------------------------------------------------------------------------------
    def _array(self, grp: zarr.Group, name: str, where: str) -> zarr.Array:
        if name not in grp:
            raise StoreError(f"{self.location}: {where}/{name} is missing (docs/store.md)")
        arr = grp[name]
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.location}: {where}/{name} is a group, expected an array")
        return arr.with_config(_ARRAY_CONFIG)  # writes through it keep every chunk (docs/store.md)

    def _require_chunks(self, arr: zarr.Array, where: str) -> None:
        """Refuse an array written with every chunk (format 2) that lacks some: never read fill values."""
        if not every_chunk_written(arr):
            return
        missing = missing_chunks(arr)
        if missing:
            raise StoreError(f"{self.location}: {where}: {len(missing)} chunk(s) missing, first {list(missing[0])} "
                             "(damaged: `geo4d verify` records it, a rerun repairs it)")

    def _read_whole(self, arr: zarr.Array, where: str) -> np.ndarray:
        """The whole array, refusing missing chunks (format 2) and undecodable or mis-checksummed ones."""
        self._require_chunks(arr, where)
        try:
            return np.asarray(arr[:])
        except OSError:
            raise  # storage errors (lost connections, …) stay what they are: retried, not damage
        except Exception as exc:  # codec errors: checksum mismatch, truncated compressed data, …
            raise StoreError(f"{self.location}: {where}: unreadable chunk ({_first_line(exc)}; "
                             "damaged: `geo4d verify` records it, a rerun repairs it)") from exc


def _json_number(value: Any) -> Any:
    """JSON of NumPy scalars (scores): plain floats, ints and bools."""
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _fused_arrays(geometry: Geometry) -> dict[str, np.ndarray]:
    """The store's fused arrays of ``geometry`` (the on-disk names of docs/store.md)."""
    if geometry.confidence is None or geometry.points is None:
        raise ValueError("fused geometry needs confidence and points")
    return {"depth": geometry.depth, "confidence": geometry.confidence, "intrinsics": geometry.intrinsics,
            _POSE_KEY: geometry.world_from_cam, "points": geometry.points}
