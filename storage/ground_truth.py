"""The on-disk ground-truth format ``<name>.gt/`` (the only code that knows it; see docs/synthetic.md).

A ground-truth directory sits beside its video (``clip.mp4`` ↔ ``clip.gt/``) and holds::

    meta.json           format tag and version, n_frames/height/width, fps, conventions, provenance
    depth.npy           (T, H, W) float32 z-depth in scene units, +inf where sky / no surface
    intrinsics.npy      (T, 3, 3) float64 pinhole K (pixel centres at integer u, v)
    world_from_cam.npy  (T, 4, 4) float64 camera-to-world, OpenCV axes, world = camera of frame 0
    dynamic_mask.npy    (T, H, W) bool, True on pixels of independently moving objects

``meta.json`` is written last, so a directory without it is an incomplete write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from geo4d.errors import InputError
from geo4d.geometry import Geometry
from geo4d.spec import jsonable

__all__ = ["GT_FORMAT", "GT_FORMAT_VERSION", "CONVENTIONS", "write_ground_truth", "read_ground_truth",
           "find_ground_truth", "ground_truth_dir"]

GT_FORMAT = "geo4d-ground-truth"
GT_FORMAT_VERSION = 1
CONVENTIONS = (
    "OpenCV camera axes (x right, y down, z forward); pixel centres at integer (u, v); "
    "depth = z-depth along the optical axis, +inf where sky (no surface); world_from_cam maps camera "
    "points to world points (its translation is the camera centre); the world frame is the camera "
    "frame of frame 0 (world_from_cam[0] = I); intrinsics K = [[fx,0,cx],[0,fy,cy],[0,0,1]]."
)
_ARRAYS = ("depth", "intrinsics", "world_from_cam", "dynamic_mask")


def ground_truth_dir(video_path: str | os.PathLike) -> Path:
    """The ground-truth directory that belongs beside a video: ``<dir>/<stem>.gt``."""
    p = Path(video_path)
    return p.parent / f"{p.stem}.gt"


def find_ground_truth(video_path: str | os.PathLike | None) -> Path | None:
    """``<stem>.gt`` beside ``video_path`` when that directory exists (and has ``meta.json``), else None."""
    if video_path is None:
        return None
    d = ground_truth_dir(video_path)
    return d if (d / "meta.json").is_file() else None


def write_ground_truth(directory: str | os.PathLike, truth: Geometry) -> Path:
    """Write ground truth to ``directory`` (created; existing ground-truth files are replaced).

    Args:
        directory: usually ``<video stem>.gt`` beside the video (see :func:`ground_truth_dir`).
        truth: the exact geometry; depth is written ``+inf`` wherever ``truth.valid`` is False, a
            missing dynamic mask as all False, ``truth.meta`` is kept in ``meta.json``.

    Returns:
        The directory.
    """
    from geo4d import __version__

    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise InputError(f"{d}: exists and is not a directory; cannot write ground truth there")
    dynamic = truth.dynamic_mask if truth.dynamic_mask is not None else np.zeros(truth.depth.shape, bool)
    arrays = {
        "depth": np.where(truth.valid, truth.depth, np.inf).astype(np.float32),
        "intrinsics": np.asarray(truth.intrinsics, dtype=np.float64),
        "world_from_cam": np.asarray(truth.world_from_cam, dtype=np.float64),
        "dynamic_mask": np.asarray(dynamic, dtype=bool),
    }
    T, H, W = _check_arrays(arrays, d)
    d.mkdir(parents=True, exist_ok=True)
    meta_path = d / "meta.json"
    if meta_path.exists():
        meta_path.unlink()  # the directory is incomplete until meta.json is back
    for name, arr in arrays.items():
        np.save(d / f"{name}.npy", arr, allow_pickle=False)
    extra = dict(truth.meta or {})
    for k in ("format", "format_version", "n_frames", "height", "width", "fps", "conventions", "files"):
        extra.pop(k, None)
    meta = {
        "format": GT_FORMAT,
        "format_version": GT_FORMAT_VERSION,
        "n_frames": T,
        "height": H,
        "width": W,
        "fps": float(truth.fps or 0.0),
        "conventions": CONVENTIONS,
        "files": {
            "depth.npy": "(T,H,W) float32 z-depth, +inf where sky",
            "intrinsics.npy": "(T,3,3) float64 K",
            "world_from_cam.npy": "(T,4,4) float64 camera-to-world",
            "dynamic_mask.npy": "(T,H,W) bool, independently moving objects",
        },
        "written_by": f"geo4d-pipeline {__version__}",
        **extra,
    }
    tmp = d / "meta.json.tmp"
    tmp.write_text(json.dumps(jsonable(meta), indent=2, default=str))
    tmp.replace(meta_path)
    return d


def read_ground_truth(directory: str | os.PathLike) -> Geometry:
    """Read and validate a ground-truth directory written by :func:`write_ground_truth`.

    Returns:
        The geometry (depth ``+inf`` at sky, ``valid`` where finite), with ``fps`` and the whole
        ``meta.json`` as ``meta``.

    Raises:
        InputError: naming the file and the problem (missing, unreadable, wrong shape or dtype,
            frame 0 not the identity, inconsistent with ``meta.json``).
    """
    d = Path(directory)
    if not d.exists():
        raise InputError(f"{d}: ground-truth directory does not exist")
    if not d.is_dir():
        raise InputError(f"{d}: not a ground-truth directory (not a directory)")
    meta = _read_meta(d)
    arrays = _read_arrays(d)
    T, H, W = _check_arrays(arrays, d)
    for key, val in (("n_frames", T), ("height", H), ("width", W)):
        if key in meta and int(meta[key]) != val:
            raise InputError(f"{d / 'meta.json'}: {key}={meta[key]} but the arrays have {val}")
    try:
        fps = float(meta.get("fps", 0.0))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{d / 'meta.json'}: fps {meta.get('fps')!r} is not a number") from exc
    return Geometry.from_depth(
        arrays["depth"].astype(np.float32, copy=False),
        arrays["intrinsics"].astype(np.float64, copy=False),
        arrays["world_from_cam"].astype(np.float64, copy=False),
        dynamic_mask=arrays["dynamic_mask"],
        fps=fps,
        meta=meta,
    )


def _read_meta(d: Path) -> dict:
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: missing; {d} is not a complete ground-truth directory")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != GT_FORMAT:
        raise InputError(f"{meta_path}: not a {GT_FORMAT} file (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    if int(meta.get("format_version", -1)) > GT_FORMAT_VERSION:
        raise InputError(f"{meta_path}: format_version {meta.get('format_version')} is newer than this reader ({GT_FORMAT_VERSION})")
    return meta


def _read_arrays(d: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for name in _ARRAYS:
        f = d / f"{name}.npy"
        if not f.is_file():
            raise InputError(f"{f}: missing")
        try:
            arrays[name] = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"{f}: not a readable .npy array ({exc})") from exc
    return arrays


def _check_arrays(a: dict[str, np.ndarray], d: Path) -> tuple[int, int, int]:
    depth = a["depth"]
    if depth.ndim != 3 or not np.issubdtype(depth.dtype, np.floating):
        raise InputError(f"{d / 'depth.npy'}: expected a float (T, H, W) array, got {depth.dtype} {depth.shape}")
    T, H, W = depth.shape
    if T < 1:
        raise InputError(f"{d / 'depth.npy'}: no frames")
    if np.isnan(depth).any() or (depth <= 0).any():
        raise InputError(f"{d / 'depth.npy'}: depth must be > 0 or +inf (sky); found NaN or non-positive values")
    expected = {"intrinsics": (T, 3, 3), "world_from_cam": (T, 4, 4), "dynamic_mask": (T, H, W)}
    for name, shape in expected.items():
        if a[name].shape != shape:
            raise InputError(f"{d / (name + '.npy')}: expected shape {shape} (from depth.npy), got {a[name].shape}")
    if a["dynamic_mask"].dtype != bool:
        raise InputError(f"{d / 'dynamic_mask.npy'}: expected dtype bool, got {a['dynamic_mask'].dtype}")
    for name in ("intrinsics", "world_from_cam"):
        if not np.issubdtype(a[name].dtype, np.floating) or not np.isfinite(a[name]).all():
            raise InputError(f"{d / (name + '.npy')}: expected finite floats, got {a[name].dtype} with non-finite values"
                             if np.issubdtype(a[name].dtype, np.floating) else
                             f"{d / (name + '.npy')}: expected finite floats, got {a[name].dtype}")
    K = a["intrinsics"]
    if (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any() or not np.allclose(K[:, 2], [0, 0, 1]):
        raise InputError(f"{d / 'intrinsics.npy'}: not pinhole intrinsics (need fx, fy > 0 and last row [0, 0, 1])")
    P = a["world_from_cam"]
    if not np.allclose(P[:, 3], [0, 0, 0, 1]):
        raise InputError(f"{d / 'world_from_cam.npy'}: last row of every pose must be [0, 0, 0, 1]")
    R = P[:, :3, :3]
    if np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max() > 1e-4 or (np.linalg.det(R) < 0).any():
        raise InputError(f"{d / 'world_from_cam.npy'}: rotation blocks are not rotations")
    if np.abs(P[0] - np.eye(4)).max() > 1e-6:
        raise InputError(f"{d / 'world_from_cam.npy'}: frame 0 must be the identity (world = camera of frame 0)")
    return T, H, W
