"""TUM RGB-D dynamic sequences (fr3 sitting/walking) as the Geo4D pose evaluation uses them.

Two layouts under ``root`` (one directory per sequence):

* prepared: ``<seq>/rgb_90/*.png`` + ``<seq>/groundtruth_90.txt`` (the evaluation's subset already cut);
* raw TUM: ``<seq>/rgb/*.png``, ``<seq>/rgb.txt`` (``timestamp filename``), ``<seq>/groundtruth.txt``.
  The subset is then made as the evaluation's preparation does: RGB frames associated with
  ground-truth poses greedily by closest timestamp (|Δt| < 0.02 s, each used once — the TUM
  benchmark tool's rule), then every 3rd associated frame, the first 90.

Poses only (no depth evaluation); frames fed at 512×384.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geo4d.datasets.base import BenchmarkSequence, require_dir, sorted_files
from geo4d.errors import InputError
from geo4d.metrics.trajectory import Trajectory, read_tum_trajectory, write_tum_trajectory

__all__ = ["TUM_DYNAMIC_SEQUENCES", "TUM_EVAL_SIZE", "tum_sequences", "load_tum", "associate_greedy",
           "read_file_list", "write_tum_sequence"]

TUM_DYNAMIC_SEQUENCES = tuple(f"rgbd_dataset_freiburg3_{a}_{b}" for a in ("sitting", "walking")
                              for b in ("static", "xyz", "halfsphere", "rpy"))
TUM_EVAL_SIZE = (512, 384)
TUM_MAX_DIFF = 0.02
TUM_STRIDE = 3
TUM_N_FRAMES = 90


def _is_sequence(d: Path) -> bool:
    return (d / "rgb_90").is_dir() or ((d / "rgb.txt").is_file() and (d / "groundtruth.txt").is_file())


def tum_sequences(root: str | os.PathLike, task: str | None = None) -> list[str]:
    r = require_dir(Path(root), "TUM-dynamics root")
    if task == "depth":
        return []
    return sorted(d.name for d in r.iterdir() if d.is_dir() and _is_sequence(d))


def read_file_list(path: str | os.PathLike) -> list[tuple[float, str]]:
    """``timestamp value…`` lines of a TUM list file (``rgb.txt``), ``#`` comments skipped."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    out = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.replace(",", " ").split()
        try:
            out.append((float(parts[0]), " ".join(parts[1:])))
        except ValueError:
            raise InputError(f"{p}:{lineno}: expected 'timestamp filename', got {s!r}") from None
    return out


def associate_greedy(stamps_a: np.ndarray, stamps_b: np.ndarray, max_diff: float = TUM_MAX_DIFF,
                     offset: float = 0.0) -> list[tuple[int, int]]:
    """The TUM benchmark's association: all pairs with ``|a − (b + offset)| < max_diff``, taken in
    order of increasing difference (ties by ``a`` then ``b``), each stamp used at most once; the
    pairs are returned sorted by ``a``. Returns index pairs ``(i_a, i_b)``."""
    a = np.asarray(stamps_a, dtype=np.float64)
    b = np.asarray(stamps_b, dtype=np.float64) + offset
    order_b = np.argsort(b, kind="stable")
    bs = b[order_b]
    cand = []
    for i, t in enumerate(a):
        lo = np.searchsorted(bs, t - max_diff, side="left")
        hi = np.searchsorted(bs, t + max_diff, side="right")
        for k in range(lo, hi):
            d = abs(t - bs[k])
            if d < max_diff:
                cand.append((d, t, bs[k], i, int(order_b[k])))
    cand.sort(key=lambda c: (c[0], c[1], c[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    pairs = []
    for _, _, _, i, j in cand:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    pairs.sort(key=lambda ij: a[ij[0]])
    return pairs


def load_tum(root: str | os.PathLike, name: str) -> BenchmarkSequence:
    d = require_dir(Path(root) / name, "TUM sequence")
    if (d / "rgb_90").is_dir():
        frames = sorted_files(d / "rgb_90", [".png", ".jpg"])
        gt = read_tum_trajectory(d / "groundtruth_90.txt")
        if len(gt) != len(frames):
            raise InputError(f"{d / 'groundtruth_90.txt'}: {len(gt)} poses for {len(frames)} frames in {d / 'rgb_90'}")
        source = d / "rgb_90"
    else:
        rgb = read_file_list(d / "rgb.txt")
        gt_all = read_tum_trajectory(d / "groundtruth.txt")
        pairs = associate_greedy(np.array([t for t, _ in rgb]), gt_all.timestamps)
        pairs = pairs[::TUM_STRIDE][:TUM_N_FRAMES]
        if not pairs:
            raise InputError(f"{d}: no RGB frame within {TUM_MAX_DIFF} s of a ground-truth pose")
        frames = [d / rgb[i][1] for i, _ in pairs]
        for f in frames:
            if not f.is_file():
                raise InputError(f"{f}: listed in {d / 'rgb.txt'} but missing")
        gt = gt_all.subset([j for _, j in pairs])
        source = d
    return BenchmarkSequence(dataset="tum", name=name, frame_paths=frames, eval_size=TUM_EVAL_SIZE,
                             world_from_cam=gt.world_from_cam, timestamps=gt.timestamps, pose_eval=True,
                             source=source)


def write_tum_sequence(root: str | os.PathLike, name: str, frames: np.ndarray, timestamps: np.ndarray,
                       world_from_cam: np.ndarray, prepared: bool = True) -> Path:
    """Write a sequence in the TUM layout (prepared ``rgb_90`` form, or raw with ``rgb.txt``)."""
    from geo4d.datasets.formats import write_image

    d = Path(root) / name
    traj = Trajectory.from_poses(timestamps, world_from_cam)
    if prepared:
        for i, f in enumerate(frames):
            write_image(d / "rgb_90" / f"{timestamps[i]:.6f}.png", f)
        write_tum_trajectory(d / "groundtruth_90.txt", traj)
    else:
        lines = ["# timestamp filename"]
        for i, f in enumerate(frames):
            rel = f"rgb/{timestamps[i]:.6f}.png"
            write_image(d / rel, f)
            lines.append(f"{timestamps[i]:.6f} {rel}")
        (d / "rgb.txt").write_text("\n".join(lines) + "\n")
        write_tum_trajectory(d / "groundtruth.txt", traj, header="timestamp tx ty tz qx qy qz qw")
    return d
