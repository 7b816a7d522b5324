"""MPI Sintel (training split, final pass) as the Geo4D evaluation uses it.

Layout (``root`` is the ``training`` directory, or a directory containing ``training/``)::

    final/<seq>/frame_0001.png …          RGB frames (1024×436)
    depth/<seq>/frame_0001.dpt …          GT depth (.dpt)
    camdata_left/<seq>/frame_0001.cam …   GT intrinsics + world→camera extrinsics (.cam)

Protocol: depth on **all** sequences (every directory of ``final/``), poses on the 14 sequences of
:data:`SINTEL_POSE_SEQUENCES`; all frames; frames fed at 576×256.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geo4d.cameras import invert_pose
from geo4d.datasets.base import BenchmarkSequence, require_dir, sorted_files
from geo4d.datasets.formats import read_cam, read_dpt, write_cam, write_dpt, write_image
from geo4d.errors import InputError

__all__ = ["SINTEL_POSE_SEQUENCES", "SINTEL_EVAL_SIZE", "sintel_root", "sintel_sequences", "load_sintel",
           "write_sintel_sequence"]

SINTEL_POSE_SEQUENCES = ("alley_2", "ambush_4", "ambush_5", "ambush_6", "cave_2", "cave_4", "market_2",
                         "market_5", "market_6", "shaman_3", "sleeping_1", "sleeping_2", "temple_2", "temple_3")
SINTEL_EVAL_SIZE = (576, 256)  # (W, H)


def sintel_root(root: str | os.PathLike) -> Path:
    r = Path(root)
    for cand in (r, r / "training"):
        if (cand / "final").is_dir():
            return cand
    raise InputError(f"{r}: not a Sintel training directory (no final/ or training/final/)")


def sintel_sequences(root: str | os.PathLike, task: str | None = None) -> list[str]:
    """Sequence names: ``task="depth"`` all, ``"pose"`` the 14 pose sequences present, None all."""
    r = sintel_root(root)
    names = sorted(p.name for p in (r / "final").iterdir() if p.is_dir())
    if task == "pose":
        return [n for n in names if n in SINTEL_POSE_SEQUENCES]
    return names


def load_sintel(root: str | os.PathLike, name: str) -> BenchmarkSequence:
    """One Sintel sequence (frames, depth files, GT poses and intrinsics read and checked)."""
    r = sintel_root(root)
    fdir = require_dir(r / "final" / name, "Sintel final-pass frames")
    frames = sorted_files(fdir, [".png"])
    ddir = r / "depth" / name
    depth = sorted_files(ddir, [".dpt"]) if ddir.is_dir() else None
    cdir = r / "camdata_left" / name
    poses = K = stamps = None
    if cdir.is_dir():
        cams = sorted_files(cdir, [".cam"])
        if len(cams) != len(frames):
            raise InputError(f"{cdir}: {len(cams)} .cam files for {len(frames)} frames in {fdir}")
        Ks, E = zip(*(read_cam(p) for p in cams))
        K = np.stack(Ks)
        poses = invert_pose(np.stack(E))
        stamps = np.array([_frame_number(p) - 1 for p in cams], dtype=np.float64)
    return BenchmarkSequence(
        dataset="sintel", name=name, frame_paths=frames, eval_size=SINTEL_EVAL_SIZE, depth_paths=depth,
        depth_reader=read_dpt if depth is not None else None, world_from_cam=poses, intrinsics=K,
        timestamps=stamps, depth_eval=depth is not None, pose_eval=poses is not None and name in SINTEL_POSE_SEQUENCES,
        source=fdir,
    )


def _frame_number(p: Path) -> int:
    digits = "".join(c for c in p.stem if c.isdigit())
    if not digits:
        raise InputError(f"{p}: no frame number in the file name")
    return int(digits)


def write_sintel_sequence(root: str | os.PathLike, name: str, frames: np.ndarray, depth: np.ndarray,
                          intrinsics: np.ndarray, world_from_cam: np.ndarray) -> Path:
    """Write a sequence in Sintel's layout under ``root`` (= a ``training`` directory); for tests
    and for packaging synthetic scenes as a benchmark. Non-finite depth is written as is."""
    r = Path(root)
    T = len(frames)
    K = np.broadcast_to(np.asarray(intrinsics, dtype=np.float64), (T, 3, 3))
    cam_from_world = invert_pose(np.asarray(world_from_cam, dtype=np.float64))
    for i in range(T):
        stem = f"frame_{i + 1:04d}"
        write_image(r / "final" / name / f"{stem}.png", frames[i])
        write_dpt(r / "depth" / name / f"{stem}.dpt", depth[i])
        write_cam(r / "camdata_left" / name / f"{stem}.cam", K[i], cam_from_world[i])
    return r
