"""Per-frame depth maps: 16-bit PNGs with a scale sidecar, or one float32 NPZ.

PNG layout::

    directory/frame_00000.png …   uint16 (H, W), value = round(depth · scale), 0 = invalid (PIL mode I;16)
    directory/scale.json          {"scale": s, "units": …, "invalid": 0, …}: depth = value / s

``s`` puts the video's largest valid depth at 65535, so the quantisation step is ``1 / s`` (error at
most ``0.5 / s``). NPZ layout: ``directory/depth.npz`` with ``depth`` (T, H, W) float32 (0 = invalid),
``confidence`` (T, H, W) float32, ``intrinsics`` (T, 3, 3), ``world_from_cam`` (T, 4, 4) float64.
Depth is z-depth along the optical axis (OpenCV camera axes), in the reconstruction's units.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from geo4d.cameras import check_shape
from geo4d.formats.common import depth_scale, frame_name, quantise_depth, write_depth_png

__all__ = ["DEPTH_FORMATS", "NPZ_FILE", "SCALE_FILE", "write_depth_npz", "write_depth_pngs"]

DEPTH_FORMATS = ("png", "npz")
SCALE_FILE = "scale.json"
NPZ_FILE = "depth.npz"


def write_depth_pngs(directory: str | Path, depth: np.ndarray, valid: np.ndarray, units: str,
                     extras: Mapping | None = None) -> dict:
    """Write one 16-bit PNG per frame and ``scale.json`` (``extras`` merged into it).

    Args:
        depth: (T, H, W) z-depth; valid: (T, H, W) bool; units: what a depth of 1 is (for the sidecar).
    Returns:
        the sidecar's content: ``{"scale", "units", "invalid", "step", "max_depth", "frames", …}``.
    """
    T, H, W = np.shape(depth)
    check_shape(valid, (T, H, W), "valid")
    ok = np.asarray(valid, bool) & np.isfinite(depth) & (np.asarray(depth) > 0)
    max_depth = float(np.max(depth, where=ok, initial=0.0))
    s = depth_scale(max_depth)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for k in range(T):
        write_depth_png(d / frame_name(k), quantise_depth(depth[k], ok[k], s))
    sidecar = {"scale": s, "units": units, "invalid": 0, "step": 1.0 / s, "max_depth": max_depth, "frames": T,
               "depth": "z-depth along the optical axis = value / scale"}
    sidecar.update(dict(extras or {}))
    (d / SCALE_FILE).write_text(json.dumps(sidecar, indent=2))
    return sidecar


def write_depth_npz(directory: str | Path, depth: np.ndarray, confidence: np.ndarray, intrinsics: np.ndarray,
                    world_from_cam: np.ndarray) -> dict:
    """Write ``directory/depth.npz`` (compressed; arrays as in the module's layout).

    Args:
        depth, confidence: (T, H, W); intrinsics: (T, 3, 3); world_from_cam: (T, 4, 4).
    """
    T, H, W = np.shape(depth)
    check_shape(confidence, (T, H, W), "confidence")
    check_shape(intrinsics, (T, 3, 3), "intrinsics")
    check_shape(world_from_cam, (T, 4, 4), "world_from_cam")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(d / NPZ_FILE, depth=np.asarray(depth, np.float32), confidence=np.asarray(confidence, np.float32),
                        intrinsics=np.asarray(intrinsics, np.float64), world_from_cam=np.asarray(world_from_cam, np.float64))
    return {"file": NPZ_FILE, "frames": T}
