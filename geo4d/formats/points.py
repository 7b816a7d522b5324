"""The point cloud the exports share: confident fused points, at most a budget, spread evenly over frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geo4d.cameras import check_shape

__all__ = ["DEFAULT_DROP_LOW_CONFIDENCE", "Cloud", "frame_quotas", "select_cloud"]

#: The least confident fraction of a video's valid points left out of every exported cloud.
DEFAULT_DROP_LOW_CONFIDENCE = 0.1


@dataclass(frozen=True)
class Cloud:
    """Exported points: ``points`` (N, 3) float32 world, ``colors`` (N, 3) uint8 RGB, ``frames`` (N,)
    int64 the frame each came from, ``min_confidence`` the least confidence kept."""

    points: np.ndarray
    colors: np.ndarray
    frames: np.ndarray
    min_confidence: float

    def __len__(self) -> int:
        return int(self.points.shape[0])


def frame_quotas(counts: np.ndarray, budget: int) -> np.ndarray:
    """Points to take per frame: as even as possible over the frames, at most ``counts[k]`` from frame
    ``k``, ``budget`` in all (or all of them when there are fewer). Water filling: every frame takes
    ``min(count, level)``; the largest level that fits, then the remainder one each to the fullest frames.

    Args:
        counts: (T,) candidate points per frame; budget: ≥ 0.
    Returns:
        (T,) int64 quotas, ``quota ≤ counts``, ``sum = min(budget, counts.sum())``.

    >>> frame_quotas(np.array([1, 10, 10, 10]), 16).tolist()
    [1, 5, 5, 5]
    >>> frame_quotas(np.array([3, 3]), 100).tolist()
    [3, 3]
    """
    c = np.asarray(counts, dtype=np.int64)
    if c.sum() <= budget:
        return c.copy()
    lo, hi = 0, int(c.max())
    while lo < hi:  # the largest level whose fill fits the budget
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(c, mid).sum() <= budget else (lo, mid - 1)
    q = np.minimum(c, lo)
    extra = budget - int(q.sum())
    room = np.flatnonzero(c > lo)
    q[_evenly(room, extra)] += 1  # extra < len(room): the next level did not fit
    return q


def _evenly(idx: np.ndarray, n: int) -> np.ndarray:
    """``n`` evenly spaced entries of ``idx`` (first and last kept), all of them when ``n ≥ len``."""
    if n >= idx.size:
        return idx
    return idx[np.linspace(0, idx.size - 1, n).round().astype(np.int64)] if n else idx[:0]


def select_cloud(points: np.ndarray, colors: np.ndarray, valid: np.ndarray, confidence: np.ndarray,
                 max_points: int, drop_low_confidence: float = DEFAULT_DROP_LOW_CONFIDENCE) -> Cloud:
    """The valid points at least as confident as the ``drop_low_confidence`` quantile of the valid
    confidences, at most ``max_points`` of them, quotas even over frames (:func:`frame_quotas`),
    evenly spaced pixels within a frame.

    Args:
        points: (T, H, W, 3) world points; colors: (T, H, W, 3) uint8; valid: (T, H, W) bool;
            confidence: (T, H, W).

    >>> T, H, W = 2, 2, 3
    >>> pts = np.arange(T * H * W * 3, dtype=np.float32).reshape(T, H, W, 3)
    >>> c = select_cloud(pts, np.zeros((T, H, W, 3), np.uint8), np.ones((T, H, W), bool),
    ...                  np.ones((T, H, W)), max_points=4)
    >>> len(c), c.frames.tolist()
    (4, [0, 0, 1, 1])
    """
    T, H, W = np.shape(valid)
    check_shape(points, (T, H, W, 3), "points")
    check_shape(colors, (T, H, W, 3), "colors")
    check_shape(confidence, (T, H, W), "confidence")
    ok = np.asarray(valid, bool) & np.isfinite(points).all(axis=-1)
    conf = np.asarray(confidence)
    threshold = float(np.quantile(conf[ok], drop_low_confidence)) if ok.any() else float("inf")
    keep = (ok & (conf >= threshold)).reshape(T, -1)
    quotas = frame_quotas(keep.sum(axis=1), max(0, int(max_points)))
    flat = [k * H * W + _evenly(np.flatnonzero(keep[k]), int(quotas[k])) for k in range(T)]
    idx = np.concatenate(flat) if flat else np.zeros(0, np.int64)
    return Cloud(np.asarray(points, np.float32).reshape(-1, 3)[idx],
                 np.asarray(colors, np.uint8).reshape(-1, 3)[idx], idx // (H * W), threshold)
