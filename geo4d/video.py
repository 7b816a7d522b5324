"""Video decoding with PyAV (pure; no store, no Prefect)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geo4d.errors import InputError

__all__ = ["VideoMeta", "probe_video", "read_video", "stream_video"]


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


def stream_video(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    block: int = 16,
) -> tuple[VideoMeta, Iterator[np.ndarray]]:
    """Decode a video as it streams: its metadata now, its kept RGB frames in blocks as they decode.

    The file is probed at once (a missing or unreadable file raises here); the blocks come from
    a generator that holds at most one block of kept frames, so memory does not grow with the
    video's length. A stream that breaks off, or stops short of the declared frame count, raises
    :class:`InputError` from the generator **after** the blocks before it: a consumer that stores
    blocks must treat them as provisional until the generator is exhausted.

    Args:
        path, size, stride, max_frames, progress: as for :func:`read_video`.
        block: kept frames per yielded block (the last may be shorter).

    Returns:
        the container's :class:`VideoMeta`, and an iterator of (n, H, W, 3) uint8 blocks, n ≤ ``block``.

    Raises:
        InputError: missing file or not a video (at once); truncated stream (from the iterator).
    """
    if stride < 1:
        raise InputError(f"frame stride must be >= 1, got {stride}")
    if block < 1:
        raise ValueError(f"block: expected >= 1, got {block}")
    meta = probe_video(path)
    return meta, _blocks(path, meta, size, stride, max_frames, progress, block)


def _blocks(path, meta: VideoMeta, size, stride: int, max_frames: int | None,
            progress: Callable[[int, int], None] | None, block: int) -> Iterator[np.ndarray]:
    """The generator behind :func:`stream_video` (every frame is decoded; every ``stride``-th kept)."""
    import av

    pending: list[np.ndarray] = []
    kept = decoded = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                decoded += 1
                if (decoded - 1) % stride:
                    continue
                pending.append(_rgb(frame, size))
                kept += 1
                if progress is not None and kept % 16 == 0:
                    progress(kept, meta.n_frames // stride)
                if len(pending) == block:
                    yield np.stack(pending)
                    pending = []
                if max_frames is not None and kept >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: video stream breaks off after {decoded} frames ({_reason(exc)}); truncated or corrupt") from exc
    if not kept:
        raise InputError(f"{path}: no decodable frames")
    if max_frames is None and meta.n_frames and decoded < meta.n_frames - 1:
        raise InputError(f"{path}: decoded {decoded} of {meta.n_frames} declared frames; truncated or corrupt")
    if pending:
        yield np.stack(pending)


def _rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    """One decoded frame as (H, W, 3) uint8 RGB, resized to ``size`` (H, W) by FFmpeg's scaler."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(width=size[1], height=size[0], format="rgb24")


def read_video(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, VideoMeta]:
    """Decode a whole video into memory (:func:`stream_video` decodes it block by block).

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
    meta, blocks = stream_video(path, size=size, stride=stride, max_frames=max_frames, progress=progress)
    return np.concatenate(list(blocks)), meta
