"""Shots of an edited video: the spans between hard cuts and fades, each reconstructed on its own.

A *boundary* is the first frame of a new shot with the kind of edit that starts it (``"cut"``: a hard
cut, ``"fade"``: a fade through black). :func:`split_shots` turns the boundaries into
:class:`Shot` spans covering every frame once; a shot shorter than one window cannot be predicted
and is recorded as skipped with the reason. Windows are laid inside each shot
(:func:`shot_window_starts`), never across a boundary, and each shot is fused on its own, in its own
world frame (its first frame) and scale. A video without boundaries is one shot of every frame and
is processed exactly as before shots existed.

Detection itself (PySceneDetect) lives in :mod:`pipeline.shots`: it needs OpenCV.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from geo4d.errors import InputError
from geo4d.windows import WINDOW_SIZE, WINDOW_STRIDE, window_starts

__all__ = ["Shot", "BOUNDARY_KINDS", "split_shots", "single_shot", "shots_from_records", "shot_window_starts",
           "windows_of_shot", "frame_shot_index", "is_single_shot", "shot_segments"]

#: What starts a shot: the video's start, a hard cut, or a fade (through black).
BOUNDARY_KINDS = ("start", "cut", "fade")


@dataclass(frozen=True)
class Shot:
    """Frames ``start … end − 1`` of a video (``end`` exclusive), one continuous camera take.

    Attributes:
        index: the shot's position in the video (0, 1, …).
        start, end: its first frame and one past its last.
        kind: the boundary that starts it: ``"start"`` (frame 0), ``"cut"`` or ``"fade"``.
        skipped: None when it is reconstructed, else why not (e.g. ``"shorter than one window (9
            frames < 16)"``).
    """

    index: int
    start: int
    end: int
    kind: str = "start"
    skipped: str | None = None

    @property
    def n_frames(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _boundary_list(boundaries: Iterable, n_frames: int) -> list[tuple[int, str]]:
    """``boundaries`` (frames, or (frame, kind) pairs) as sorted unique (frame, kind) inside (0, T)."""
    out: dict[int, str] = {}
    for b in boundaries:
        frame, kind = (b, "cut") if np.isscalar(b) else (b[0], b[1])
        if kind not in BOUNDARY_KINDS[1:]:
            raise InputError(f"shot boundary at frame {frame}: kind {kind!r} is not one of {BOUNDARY_KINDS[1:]}")
        if 0 < int(frame) < n_frames:
            out.setdefault(int(frame), kind)
    return sorted(out.items())


def split_shots(boundaries: Iterable, n_frames: int, min_frames: int = WINDOW_SIZE) -> list[Shot]:
    """The shots between ``boundaries``: spans covering frames ``0 … n_frames − 1`` once, in order.

    Args:
        boundaries: first frames of new shots, as ints (hard cuts) or ``(frame, kind)`` pairs;
            frames ≤ 0 or ≥ ``n_frames`` are ignored, duplicates kept once.
        n_frames: T, the video's length.
        min_frames: the shortest shot that is reconstructed (one window); shorter ones are skipped.

    Example:
        >>> [(s.start, s.end, s.kind, s.skipped) for s in split_shots([(40, "cut"), 49], 80)]
        [(0, 40, 'start', None), (40, 49, 'cut', 'shorter than one window (9 frames < 16)'), (49, 80, 'cut', None)]
    """
    if n_frames < 1:
        raise InputError(f"shots: a video of {n_frames} frames has no shots")
    cuts = _boundary_list(boundaries, n_frames)
    starts = [(0, "start")] + cuts
    shots = []
    for i, (start, kind) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else n_frames
        n = end - start
        reason = None if n >= min_frames else f"shorter than one window ({n} frames < {min_frames})"
        shots.append(Shot(i, start, end, kind, reason))
    return shots


def single_shot(n_frames: int) -> list[Shot]:
    """The one shot of a video without cuts (how videos of stores without a shots stage are read)."""
    return [Shot(0, 0, int(n_frames), "start", None)]


def shots_from_records(records: Sequence[Mapping[str, Any]], n_frames: int) -> list[Shot]:
    """Shots from their stored dicts (:meth:`Shot.to_dict`), checked to cover ``n_frames`` in order."""
    shots = [Shot(int(r["index"]), int(r["start"]), int(r["end"]), str(r.get("kind", "start")), r.get("skipped"))
             for r in records]
    edges = [s.start for s in shots] + [shots[-1].end if shots else 0]
    if not shots or edges[0] != 0 or edges[-1] != n_frames or any(b <= a for a, b in zip(edges, edges[1:])):
        raise InputError(f"shots: {[(s.start, s.end) for s in shots]} do not cover the {n_frames} frames in order")
    return shots


def is_single_shot(shots: Sequence[Shot], n_frames: int) -> bool:
    """Whether ``shots`` is the trivial split: one reconstructed shot of every frame."""
    return len(shots) == 1 and shots[0].start == 0 and shots[0].end == n_frames and shots[0].skipped is None


def shot_segments(shots: Sequence[Shot]) -> list[list[int]]:
    """``[[start, end], …]`` of the reconstructed shots (what the windows and the fusion depend on)."""
    return [[s.start, s.end] for s in shots if s.skipped is None]


def shot_window_starts(shots: Sequence[Shot], size: int = WINDOW_SIZE, stride: int = WINDOW_STRIDE) -> list[int]:
    """Window starts laid inside each reconstructed shot (:func:`geo4d.windows.window_starts` per shot).

    Example:
        >>> shot_window_starts(split_shots([24], 48), 16, 4)
        [0, 4, 8, 24, 28, 32]
    """
    out: list[int] = []
    for s in shots:
        if s.skipped is None:
            out += [s.start + k for k in window_starts(s.n_frames, size, stride)]
    if not out:
        raise InputError(f"shots: no shot is at least one window ({size} frames) long")
    return out


def windows_of_shot(starts: Sequence[int], shot: Shot, size: int) -> list[int]:
    """Indices of the windows lying wholly inside ``shot``."""
    return [g for g, s in enumerate(starts) if shot.start <= s and s + size <= shot.end]


def frame_shot_index(shots: Sequence[Shot], n_frames: int) -> np.ndarray:
    """(T,) int16 index of each frame's shot, −1 for frames of skipped shots (``fused/shot``)."""
    out = np.full(n_frames, -1, dtype=np.int16)
    for s in shots:
        if s.skipped is None:
            out[s.start:s.end] = s.index
    return out


def join_shot_geometry(parts: Sequence[tuple[Shot, Any, np.ndarray | None]], n_frames: int, height: int,
                       width: int) -> tuple[Any, np.ndarray]:
    """The per-shot fused geometries joined into one video of ``n_frames`` (T, …) arrays.

    Args:
        parts: ``(shot, geometry, depth_source)`` per reconstructed shot: its
            :class:`geo4d.geometry.Geometry` of ``shot.n_frames`` frames in the shot's own world frame
            (its first frame) and scale, and its (n, H, W) depth-source codes (or None).

    Returns:
        ``(geometry, depth_source)``: frames of each shot as fused; frames of skipped shots have
        depth, confidence and points 0 (invalid), depth source 0, pose the identity and the K of the
        nearest reconstructed frame.
    """
    from geo4d.geometry import Geometry

    T, H, W = n_frames, height, width
    depth = np.zeros((T, H, W), np.float32)
    conf = np.zeros((T, H, W), np.float32)
    points = np.zeros((T, H, W, 3), np.float32)
    source = np.zeros((T, H, W), np.uint8)
    poses = np.tile(np.eye(4), (T, 1, 1))
    K = np.full((T, 3, 3), np.nan)
    for shot, g, src in parts:
        sl = slice(shot.start, shot.end)
        depth[sl], conf[sl], points[sl] = g.depth, g.confidence, g.points
        poses[sl], K[sl] = g.world_from_cam, g.intrinsics
        source[sl] = src if src is not None else np.where(g.confidence > 0, 1, 0)
    have = np.flatnonzero(np.isfinite(K[:, 0, 0]))
    for t in np.flatnonzero(~np.isfinite(K[:, 0, 0])):
        K[t] = K[have[np.argmin(np.abs(have - t))]]
    return Geometry(depth, conf > 0, K, poses, points=points, confidence=conf), source
