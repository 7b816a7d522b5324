"""KITTI depth (annotated val split, left camera ``image_02``) as the Geo4D evaluation uses it.

Two layouts:

* prepared (the evaluation's gathered subset): ``root`` = ``…/val_selection_cropped`` (or a parent
  holding ``depth_selection/val_selection_cropped``) with ``image_gathered/<drive>/*.png`` and
  ``groundtruth_depth_gathered/<drive>/*.png``, paired by sorted order;
* raw: ``root/val/<drive>/proj_depth/groundtruth/image_02/*.png`` (annotated depth) with the raw
  images ``root/<date>/<drive>/image_02/data/<same name>`` (or under ``root/raw/``); the first
  110 annotated maps of each drive are used (annotations start at frame 5).

Depth: 16-bit PNG, metres = value / 256, 0 = missing; no depth cap. Video depth only (no poses).
Frames fed at 640×192.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geo4d.datasets.base import BenchmarkSequence, require_dir, sorted_files
from geo4d.datasets.formats import KITTI_DEPTH_SCALE, read_depth_png, write_depth_png, write_image
from geo4d.errors import InputError

__all__ = ["KITTI_EVAL_SIZE", "KITTI_MAX_FRAMES", "kitti_layout", "kitti_sequences", "load_kitti",
           "read_kitti_depth", "write_kitti_sequence"]

KITTI_EVAL_SIZE = (640, 192)
KITTI_MAX_FRAMES = 110


def read_kitti_depth(path: str | os.PathLike) -> np.ndarray:
    """A KITTI annotated depth PNG → metres (value / 256), 0 where missing."""
    return read_depth_png(path, KITTI_DEPTH_SCALE)


def kitti_layout(root: str | os.PathLike) -> tuple[str, Path]:
    """("prepared", dir) or ("raw", dir) for ``root``."""
    r = Path(root)
    for cand in (r, r / "val_selection_cropped", r / "depth_selection" / "val_selection_cropped"):
        if (cand / "image_gathered").is_dir() and (cand / "groundtruth_depth_gathered").is_dir():
            return "prepared", cand
    if (r / "val").is_dir():
        return "raw", r
    raise InputError(f"{r}: not a KITTI depth directory (no image_gathered/ + groundtruth_depth_gathered/, no val/)")


def kitti_sequences(root: str | os.PathLike, task: str | None = None) -> list[str]:
    if task == "pose":
        return []
    kind, r = kitti_layout(root)
    base = r / "groundtruth_depth_gathered" if kind == "prepared" else r / "val"
    return sorted(p.name for p in base.iterdir() if p.is_dir())


def _raw_image(r: Path, drive: str, name: str) -> Path:
    date = drive[:10]
    for base in (r, r / "raw"):
        p = base / date / drive / "image_02" / "data" / name
        if p.is_file():
            return p
    raise InputError(f"{r}: raw image {date}/{drive}/image_02/data/{name} not found (needed for {drive})")


def load_kitti(root: str | os.PathLike, name: str) -> BenchmarkSequence:
    kind, r = kitti_layout(root)
    if kind == "prepared":
        depth = sorted_files(require_dir(r / "groundtruth_depth_gathered" / name, "KITTI depth"), [".png"])
        frames = sorted_files(require_dir(r / "image_gathered" / name, "KITTI frames"), [".png"])
        source = r / "image_gathered" / name
    else:
        gdir = require_dir(r / "val" / name / "proj_depth" / "groundtruth" / "image_02", "KITTI annotated depth")
        depth = sorted_files(gdir, [".png"])[:KITTI_MAX_FRAMES]
        frames = [_raw_image(r, name, p.name) for p in depth]
        source = gdir
    if len(depth) != len(frames):
        raise InputError(f"{source}: {len(frames)} frames for {len(depth)} ground-truth depth maps")
    return BenchmarkSequence(dataset="kitti", name=name, frame_paths=frames, eval_size=KITTI_EVAL_SIZE,
                             depth_paths=depth, depth_reader=read_kitti_depth, depth_eval=True, source=source)


def write_kitti_sequence(root: str | os.PathLike, name: str, frames: np.ndarray, depth: np.ndarray) -> Path:
    """Write a drive in the prepared (gathered) layout under ``root``."""
    r = Path(root)
    for i in range(len(frames)):
        stem = f"{i + 5:010d}"
        write_image(r / "image_gathered" / name / f"{stem}.png", frames[i])
        write_depth_png(r / "groundtruth_depth_gathered" / name / f"{stem}.png", depth[i], KITTI_DEPTH_SCALE)
    return r
