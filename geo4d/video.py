"""Video decoding with PyAV (pure; no store, no Prefect)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geo4d.errors import InputError

__all__ = ["VideoMeta", "probe_video", "read_video"]


@dataclass(frozen=True)
class VideoMeta:
    path: str
    n_frames: int  # as declared by the container (0 when unknown)
    fps: float
    height: int
    width: int
    codec: str


def _open(path: str | os.PathLike):
    import av

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a video file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file, not a video")
    try:
        container = av.open(str(p))
    except av.error.FFmpegError as exc:
        raise InputError(f"{p}: not a readable video ({_reason(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise InputError(f"{p}: contains no video stream (truncated or corrupt file, or not a video)")
    return container


def _reason(exc: Exception) -> str:
    text = str(exc).split(":")[0] if ":" in str(exc) else str(exc)
    return getattr(exc, "strerror", None) or text or type(exc).__name__


def probe_video(path: str | os.PathLike) -> VideoMeta:
    """Container metadata of a video file; raises :class:`InputError` for unreadable files."""
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        return VideoMeta(
            path=str(path),
            n_frames=int(stream.frames or 0),
            fps=fps,
            height=int(stream.codec_context.height),
            width=int(stream.codec_context.width),
            codec=str(stream.codec_context.name),
        )


def read_video(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, VideoMeta]:
    """Decode a video into RGB frames.

    Args:
        path: video file.
        size: (H, W) to resize every frame to (bilinear, by FFmpeg's scaler), or None to keep it.
        stride: keep every ``stride``-th frame (every frame is still decoded).
        max_frames: stop after this many kept frames.
        progress: called as ``progress(kept_frames, declared_total)`` every 16 frames.

    Returns:
        frames (T, H, W, 3) uint8, and the container's :class:`VideoMeta`.

    Raises:
        InputError: missing file, not a video, or a stream that breaks off (truncated file).
    """
    import av

    if stride < 1:
        raise InputError(f"frame stride must be >= 1, got {stride}")
    meta = probe_video(path)
    kept: list[np.ndarray] = []
    decoded = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if decoded % stride == 0:
                    if size is not None:
                        arr = frame.to_ndarray(width=size[1], height=size[0], format="rgb24")
                    else:
                        arr = frame.to_ndarray(format="rgb24")
                    kept.append(arr)
                    if progress is not None and len(kept) % 16 == 0:
                        progress(len(kept), meta.n_frames // stride)
                    if max_frames is not None and len(kept) >= max_frames:
                        break
                decoded += 1
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: video stream breaks off after {decoded} frames ({_reason(exc)}); truncated or corrupt") from exc
    if not kept:
        raise InputError(f"{path}: no decodable frames")
    if max_frames is None and meta.n_frames and decoded < meta.n_frames - 1:
        raise InputError(f"{path}: decoded {decoded} of {meta.n_frames} declared frames; truncated or corrupt")
    return np.stack(kept), meta
