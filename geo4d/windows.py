"""Sliding windows over a video (Geo4D samples 16-frame windows with stride 4)."""

from __future__ import annotations

from geo4d.errors import InputError

WINDOW_SIZE = 16
WINDOW_STRIDE = 4

__all__ = ["WINDOW_SIZE", "WINDOW_STRIDE", "window_starts", "VideoTooShortError"]


class VideoTooShortError(InputError, ValueError):
    """The video has fewer frames than one window."""


def window_starts(n_frames: int, size: int = WINDOW_SIZE, stride: int = WINDOW_STRIDE) -> list[int]:
    """First-frame indices of the windows covering ``n_frames`` frames.

    Starts ``0, stride, 2·stride, …`` while a whole window fits, plus one window ending at the last
    frame when the stride does not land there (no duplicate window, unlike the official script).

    Example:
        >>> window_starts(24)
        [0, 4, 8]
        >>> window_starts(22)
        [0, 4, 6]
    """
    if size < 1 or stride < 1:
        raise ValueError(f"window size and stride must be >= 1, got size={size}, stride={stride}")
    if n_frames < size:
        raise VideoTooShortError(f"video has {n_frames} frames, fewer than one window of {size}")
    starts = list(range(0, n_frames - size + 1, stride))
    if starts[-1] != n_frames - size:
        starts.append(n_frames - size)
    return starts
