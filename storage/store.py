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
from zarr.codecs import BloscCodec

from geo4d.errors import StoreError
from geo4d.geometry import Geometry
from geo4d.predictor import MODALITIES, WindowPrediction

__all__ = [
    "Store",
    "STAGES",
    "FUSED_ARRAYS",
    "VideoInfo",
    "video_id_for",
    "stage_fingerprint",
]

STORE_FORMAT = "geo4d-store"
STORE_VERSION = 1
#: Pipeline stages in order; a stage's record is written only after all its arrays are complete.
STAGES = ("decode", "windows", "fuse", "evaluate")
#: Names of the fused arrays (``fused/<name>``) and their per-frame trailing shapes.
#: The store's name of :attr:`geo4d.geometry.Geometry.world_from_cam` (kept for format compatibility).
_POSE_KEY = "cam_to_world"
FUSED_ARRAYS = ("depth", "confidence", "intrinsics", _POSE_KEY, "points")
_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
_VIDEO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(digest_bytes))
        if size > 2 * digest_bytes:
            f.seek(size - digest_bytes)
        h.update(f.read(digest_bytes))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", p.stem).strip("._-") or "video"
    return f"{stem[:80]}-{h.hexdigest()[:10]}"


def stage_fingerprint(parameters: Mapping[str, Any]) -> str:
    """Short hash of a stage's parameters (JSON, sorted keys): equal inputs → equal fingerprint."""
    blob = json.dumps(parameters, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


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
            self.root.require_group("videos")

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
        grp = self.root.require_group(f"videos/{info.video_id}")
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

    def delete_video(self, video_id: str) -> None:
        """Remove ``videos/<id>`` and everything under it."""
        self._video_group(video_id)
        del self.root[f"videos/{video_id}"]

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
        if status not in ("complete", "failed"):
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
            return grp.create_array(
                "frames",
                shape=(info.n_frames, info.height, info.width, 3),
                chunks=(1, info.height, info.width, 3),
                dtype="uint8",
                compressors=_COMPRESSOR,
                fill_value=0,
                overwrite=True,
            )
        return self._array(grp, "frames", video_id)

    def read_frames(self, video_id: str) -> np.ndarray:
        return np.asarray(self.frames_array(video_id)[:])

    # ---- windows ---------------------------------------------------------------------------------
    def prepare_windows(
        self, video_id: str, starts: list[int], window_size: int, stride: int, predictor: str, fingerprint: str,
        parameters: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Create the windows arrays (or keep them when layout and fingerprint match).

        ``parameters`` (what the fingerprint was computed from) are kept in the group's attributes so a
        later run of other settings can name what differs. Returns the per-window completion flags
        (G,) bool — True for windows already stored.
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
                and "done" in wg
            )
            if same:
                return np.asarray(wg["done"][:]).astype(bool)
        wg = grp.require_group("windows")
        G, V, H, W = len(starts), window_size, info.height, info.width
        shapes = {
            "pointmap": (G, V, H, W, 3),
            "pointmap_conf": (G, V, H, W),
            "ray_dir": (G, V, H, W, 3),
            "ray_moment": (G, V, H, W, 3),
            "disparity": (G, V, H, W),
        }
        for name, shape in shapes.items():
            wg.create_array(
                name,
                shape=shape,
                chunks=(1,) + shape[1:],
                dtype="float32",
                compressors=_COMPRESSOR,
                fill_value=0.0,
                overwrite=True,
            )
        wg.create_array("done", shape=(G,), chunks=(1,), dtype="uint8", fill_value=0, overwrite=True)
        wg.attrs.update(
            {"starts": starts, "window_size": window_size, "stride": stride, "predictor": predictor,
             "fingerprint": fingerprint, "parameters": dict(parameters or {})}
        )
        return np.zeros(G, dtype=bool)

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
        """Store window ``g``'s modalities, then mark it done (the marker is written last)."""
        wg = self._video_group(video_id)["windows"]
        for name, arr in prediction.as_dict().items():
            wg[name][g] = np.asarray(arr, dtype=np.float32)
        wg["done"][g] = 1

    def windows(self, video_id: str) -> tuple[dict[str, zarr.Array], list[int], int]:
        """The stored windows: ``({modality: zarr.Array (G,…)}, starts, window_size)``.

        Works for stores written by other tools that follow docs/store.md (no ``done`` array needed).
        """
        grp = self._video_group(video_id)
        if "windows" not in grp:
            raise StoreError(f"{self.location}: video {video_id} has no windows group (run the windows stage first)")
        wg = grp["windows"]
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
        return arrays, starts, V

    # ---- fused -----------------------------------------------------------------------------------
    def write_fused(self, video_id: str, geometry: Geometry, diagnostics: Mapping[str, Any] | None = None) -> None:
        """Write the fused geometry as ``fused/<name>`` (:data:`FUSED_ARRAYS`, float32, chunked per frame).

        ``geometry`` needs ``confidence`` and ``points``; ``diagnostics`` go to the group's attrs.
        """
        arrays = _fused_arrays(geometry)
        info = self.video_info(video_id)
        fg = self._video_group(video_id).require_group("fused")
        for name in FUSED_ARRAYS:
            arr = np.asarray(arrays[name], dtype=np.float32)
            if arr.shape[0] != info.n_frames:
                raise ValueError(f"fused/{name}: expected {info.n_frames} frames, got shape {arr.shape}")
            a = fg.create_array(
                name, shape=arr.shape, chunks=(1,) + arr.shape[1:], dtype="float32",
                compressors=_COMPRESSOR, fill_value=0.0, overwrite=True,
            )
            a[:] = arr
        if diagnostics:
            fg.attrs.update(json.loads(json.dumps({"diagnostics": dict(diagnostics)}, default=str)))

    def read_fused(self, video_id: str) -> Geometry:
        """The fused geometry (float32 as stored; ``valid`` where confidence > 0; ``meta``: the group's attrs)."""
        grp = self._video_group(video_id)
        if "fused" not in grp:
            raise StoreError(f"{self.location}: video {video_id} has no fused group (run the fuse stage first)")
        fg = grp["fused"]
        a = {name: np.asarray(self._array(fg, name, f"{video_id}/fused")[:]) for name in FUSED_ARRAYS}
        return Geometry(a["depth"], a["confidence"] > 0, a["intrinsics"], a[_POSE_KEY], points=a["points"],
                        confidence=a["confidence"], meta=fg.attrs.asdict())

    # ---- helpers ---------------------------------------------------------------------------------
    def _array(self, grp: zarr.Group, name: str, where: str) -> zarr.Array:
        if name not in grp:
            raise StoreError(f"{self.location}: {where}/{name} is missing (docs/store.md)")
        arr = grp[name]
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.location}: {where}/{name} is a group, expected an array")
        return arr


def _fused_arrays(geometry: Geometry) -> dict[str, np.ndarray]:
    """The store's fused arrays of ``geometry`` (the on-disk names of docs/store.md)."""
    if geometry.confidence is None or geometry.points is None:
        raise ValueError("fused geometry needs confidence and points")
    return {"depth": geometry.depth, "confidence": geometry.confidence, "intrinsics": geometry.intrinsics,
            _POSE_KEY: geometry.world_from_cam, "points": geometry.points}
