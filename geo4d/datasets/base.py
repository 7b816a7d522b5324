"""What a benchmark reader yields: :class:`BenchmarkSequence` (frames, GT depth, validity, poses)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geo4d.cameras import check_shape, invert_pose
from geo4d.errors import InputError
from geo4d.geometry import Geometry

__all__ = ["BenchmarkSequence", "sorted_files", "require_dir"]


def sorted_files(directory: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files of ``directory`` with one of ``suffixes`` (case-insensitive), sorted by name."""
    suf = tuple(s.lower() for s in suffixes)
    return sorted((p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suf), key=lambda p: p.name)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{path}: no such directory ({what})")
    return path


@dataclass
class BenchmarkSequence:
    """One sequence of a benchmark, as its evaluation protocol uses it.

    Frames and depth maps are read on demand (a Sintel sequence is ~100 MB of depth); poses and
    intrinsics are small and read up front.

    Attributes:
        dataset: ``"sintel"``, ``"bonn"``, ``"kitti"`` or ``"tum"``.
        name: sequence name (e.g. ``"alley_2"``).
        frame_paths: the protocol's frames, in order.
        eval_size: ``(W, H)`` the protocol feeds the predictor (frames squashed to it, no crop).
        depth_paths: GT depth files paired one-to-one with ``frame_paths`` (None: no depth GT).
        depth_reader: reads one depth file → (H, W) float32 metres, 0 where missing.
        world_from_cam: (T, 4, 4) GT camera-to-world poses (None: no pose GT). Expressed in the
            dataset's own world frame (pose metrics are invariant to it).
        intrinsics: (T, 3, 3) GT intrinsics at the native (GT) resolution, or None.
        timestamps: (T,) seconds (or frame indices where the dataset has no clock), or None.
        depth_eval, pose_eval: whether the protocol evaluates depth / poses on this sequence.
    """

    dataset: str
    name: str
    frame_paths: list[Path]
    eval_size: tuple[int, int]
    depth_paths: list[Path] | None = None
    depth_reader: Callable[[Path], np.ndarray] | None = None
    world_from_cam: np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    depth_eval: bool = False
    pose_eval: bool = False
    source: Path | None = None

    def __post_init__(self) -> None:
        T = len(self.frame_paths)
        if T == 0:
            raise InputError(f"{self.source or self.name}: no frames")
        if self.depth_paths is not None and len(self.depth_paths) != T:
            raise InputError(
                f"{self.source or self.name}: {len(self.depth_paths)} ground-truth depth maps for {T} frames"
            )
        if self.world_from_cam is not None:
            check_shape(self.world_from_cam, (T, 4, 4), f"{self.name}: world_from_cam")
        if self.intrinsics is not None:
            check_shape(self.intrinsics, (T, 3, 3), f"{self.name}: intrinsics")

    @property
    def n_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def has_depth(self) -> bool:
        return self.depth_paths is not None

    def read_frames(self, size: tuple[int, int] | str | None = "eval") -> np.ndarray:
        """uint8 (T, H, W, 3) frames; ``size="eval"`` resizes to :attr:`eval_size` as the protocol
        does, ``None`` keeps the files' size, or give ``(W, H)``."""
        from geo4d.datasets.formats import read_image

        wh = self.eval_size if size == "eval" else size
        frames = [read_image(p, size=wh) for p in self.frame_paths]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise InputError(f"{self.source or self.name}: frames of different sizes {sorted(shapes)}")
        return np.stack(frames)

    def read_depth(self) -> tuple[np.ndarray, np.ndarray]:
        """GT depth (T, H, W) float32 metres (0 where missing) and its validity (finite, > 0)."""
        if self.depth_paths is None or self.depth_reader is None:
            raise InputError(f"{self.dataset}/{self.name}: this dataset has no ground-truth depth")
        maps = [self.depth_reader(p) for p in self.depth_paths]
        shapes = {m.shape for m in maps}
        if len(shapes) != 1:
            raise InputError(f"{self.source or self.name}: depth maps of different sizes {sorted(shapes)}")
        depth = np.stack(maps).astype(np.float32)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(depth) & (depth > 0)
        return depth, valid

    def synthetic_truth(self, size: tuple[int, int] | None = None) -> Geometry:
        """Ground truth at ``size = (W, H)`` (default :attr:`eval_size`) for the synthetic predictor.

        Depth is resampled nearest-neighbour (invalid → +inf, ``valid`` = finite), intrinsics are
        rescaled with pixel centres at integer coordinates, poses are re-expressed with frame 0 as
        the world; no dynamic object is marked (an all-False mask) and ``fps`` is 24.

        Raises:
            InputError: the dataset lacks depth, poses or intrinsics (the synthetic predictor needs all).
        """
        missing = [n for n, v in (("depth", self.depth_paths), ("poses", self.world_from_cam),
                                  ("intrinsics", self.intrinsics)) if v is None]
        if missing:
            raise InputError(
                f"{self.dataset}/{self.name}: the synthetic predictor (a test instrument) needs ground-truth "
                f"depth, poses and intrinsics; this dataset has no {', '.join(missing)}"
            )
        W, H = size or self.eval_size
        depth, valid = self.read_depth()
        h, w = depth.shape[1:]
        rows = np.clip(np.rint((np.arange(H) + 0.5) * h / H - 0.5).astype(int), 0, h - 1)
        cols = np.clip(np.rint((np.arange(W) + 0.5) * w / W - 0.5).astype(int), 0, w - 1)
        d = np.where(valid, depth, np.inf)[:, rows][:, :, cols].astype(np.float32)
        K = np.array(self.intrinsics, dtype=np.float64)
        sx, sy = W / w, H / h
        K[:, 0, 0] *= sx
        K[:, 1, 1] *= sy
        K[:, 0, 2] = (K[:, 0, 2] + 0.5) * sx - 0.5
        K[:, 1, 2] = (K[:, 1, 2] + 0.5) * sy - 0.5
        pose = np.asarray(self.world_from_cam, dtype=np.float64)
        pose = invert_pose(pose[0])[None] @ pose
        return Geometry(d, np.isfinite(d), K, pose, dynamic_mask=np.zeros(d.shape, dtype=bool), fps=24.0,
                        meta={"source": f"{self.dataset}/{self.name}", "resampled_to": [W, H]})
