"""Bonn RGB-D dynamic dataset as the Geo4D evaluation uses it (video depth and poses).

``root`` holds ``rgbd_bonn_<seq>/`` directories (or is their parent ``rgbd_bonn_dataset``' parent).
Each sequence either has the prepared subset — ``rgb_110/``, ``depth_110/``,
``groundtruth_110.txt`` — or the raw ``rgb/``, ``depth/``, ``groundtruth.txt``, from which the
subset is cut as the preparation does: frames 30–139 of the sorted ``rgb/`` and of the sorted
``depth/`` lists (each sorted independently, no timestamp association) and data rows 30–139 of
``groundtruth.txt``.

Depth: 16-bit PNG, metres = value / 5000, 0 = missing. Sequences: balloon2, crowd2, crowd3,
person_tracking2, synchronous. Frames fed at 512×384.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geo4d.datasets.base import BenchmarkSequence, require_dir, sorted_files
from geo4d.datasets.formats import TUM_DEPTH_SCALE, read_depth_png, write_depth_png, write_image
from geo4d.errors import InputError
from geo4d.metrics.trajectory import Trajectory, read_tum_trajectory, write_tum_trajectory

__all__ = ["BONN_SEQUENCES", "BONN_EVAL_SIZE", "BONN_FRAMES", "bonn_root", "bonn_sequences", "load_bonn",
           "read_bonn_depth", "write_bonn_sequence"]

BONN_SEQUENCES = ("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous")
BONN_EVAL_SIZE = (512, 384)
BONN_FRAMES = slice(30, 140)  # frames 30–139 (110)


def read_bonn_depth(path: str | os.PathLike) -> np.ndarray:
    """A Bonn / TUM depth PNG → metres (value / 5000), 0 where missing."""
    return read_depth_png(path, TUM_DEPTH_SCALE)


def bonn_root(root: str | os.PathLike) -> Path:
    r = Path(root)
    for cand in (r, r / "rgbd_bonn_dataset"):
        if cand.is_dir() and any(p.name.startswith("rgbd_bonn_") for p in cand.iterdir() if p.is_dir()):
            return cand
    raise InputError(f"{r}: no rgbd_bonn_<sequence> directories (Bonn RGB-D dynamic layout)")


def bonn_sequences(root: str | os.PathLike, task: str | None = None) -> list[str]:
    r = bonn_root(root)
    return [s for s in BONN_SEQUENCES if (r / f"rgbd_bonn_{s}").is_dir()]


def load_bonn(root: str | os.PathLike, name: str) -> BenchmarkSequence:
    d = require_dir(bonn_root(root) / f"rgbd_bonn_{name}", "Bonn sequence")
    if (d / "rgb_110").is_dir():
        frames = sorted_files(d / "rgb_110", [".png"])
        depth = sorted_files(require_dir(d / "depth_110", "Bonn depth"), [".png"])
        gt = read_tum_trajectory(d / "groundtruth_110.txt") if (d / "groundtruth_110.txt").is_file() else None
        source = d / "rgb_110"
    else:
        frames = sorted_files(require_dir(d / "rgb", "Bonn frames"), [".png"])[BONN_FRAMES]
        depth = sorted_files(require_dir(d / "depth", "Bonn depth"), [".png"])[BONN_FRAMES]
        gt = _rows(d / "groundtruth.txt")
        source = d / "rgb"
    if gt is not None and len(gt) != len(frames):
        raise InputError(f"{gt.name}: {len(gt)} poses for {len(frames)} frames in {source}")
    return BenchmarkSequence(
        dataset="bonn", name=name, frame_paths=frames, eval_size=BONN_EVAL_SIZE, depth_paths=depth,
        depth_reader=read_bonn_depth, world_from_cam=gt.world_from_cam if gt is not None else None,
        timestamps=gt.timestamps if gt is not None else None, depth_eval=True, pose_eval=gt is not None,
        source=source,
    )


def _rows(path: Path) -> Trajectory | None:
    """Data rows 30–139 of a raw ``groundtruth.txt`` (by row index, not by timestamp)."""
    if not path.is_file():
        return None
    traj = read_tum_trajectory(path)
    idx = np.arange(len(traj))[BONN_FRAMES]
    return traj.subset(idx)


def write_bonn_sequence(root: str | os.PathLike, name: str, frames: np.ndarray, depth: np.ndarray,
                        timestamps: np.ndarray, world_from_cam: np.ndarray, prepared: bool = True) -> Path:
    """Write a sequence in Bonn's layout (prepared ``*_110`` form, or raw ``rgb/``, ``depth/``)."""
    d = Path(root) / f"rgbd_bonn_{name}"
    rgb_dir, depth_dir, gt_name = ("rgb_110", "depth_110", "groundtruth_110.txt") if prepared else \
        ("rgb", "depth", "groundtruth.txt")
    for i in range(len(frames)):
        stem = f"{timestamps[i]:.6f}"
        write_image(d / rgb_dir / f"{stem}.png", frames[i])
        write_depth_png(d / depth_dir / f"{stem}.png", depth[i], TUM_DEPTH_SCALE)
    write_tum_trajectory(d / gt_name, Trajectory.from_poses(timestamps, world_from_cam),
                         header="timestamp tx ty tz qx qy qz qw")
    return d
