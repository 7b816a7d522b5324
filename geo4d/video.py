"""Video decoding with PyAV (pure; no store, no Prefect)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from geo4d.errors import InputError
from geo4d.framing import Framing, plan_framing

__all__ = ["VideoMeta", "FrameBlock", "probe_video", "decode_framing", "read_video", "stream_video", "average_rate"]


@dataclass(frozen=True)
class VideoMeta:
    """Container metadata. ``height``/``width`` are the coded size; ``upright_size`` is the size a
    viewer shows: rotation metadata applied and non-square pixels (``pixel_aspect``) made square."""

    path: str
    n_frames: int  # as declared by the container (0 when unknown)
    fps: float
    height: int
    width: int
    codec: str
    rotation: int = 0  # degrees counter-clockwise that make the coded frames upright (display matrix)
    pixel_aspect: float = 1.0  # sample aspect ratio (pixel width / height) of the coded frames

    @property
    def upright_size(self) -> tuple[int, int]:
        """(H_s, W_s) of the upright frame in square pixels."""
        h, w = self.height, max(1, round(self.width * self.pixel_aspect))
        return (w, h) if self.rotation % 180 else (h, w)


class FrameBlock(NamedTuple):
    """A block of decoded frames: (n, H, W, 3) uint8 and their presentation times (n,) in seconds."""

    frames: np.ndarray
    times: np.ndarray


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
        sar = stream.sample_aspect_ratio
        return VideoMeta(
            path=str(path),
            n_frames=int(stream.frames or 0),
            fps=fps,
            height=int(stream.codec_context.height),
            width=int(stream.codec_context.width),
            codec=str(stream.codec_context.name),
            rotation=_first_rotation(container, stream),
            pixel_aspect=float(sar) if sar else 1.0,
        )


def _first_rotation(container, stream) -> int:
    """The display rotation of the stream (from its first frame's display matrix), a multiple of 90."""
    import av

    try:
        for frame in container.decode(stream):
            return int(round((frame.rotation or 0) / 90.0)) * 90 % 360
    except av.error.FFmpegError:
        return 0  # the full decode reports the damage, naming the file
    return 0


def decode_framing(meta: VideoMeta, size: tuple[int, int] | None, resize: str = "crop") -> Framing:
    """How :func:`stream_video` brings this video's upright frames to ``size`` (:mod:`geo4d.framing`)."""
    return plan_framing(meta.upright_size, size, resize, rotation=meta.rotation)


def stream_video(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    block: int = 16,
    resize: str = "crop",
) -> tuple[VideoMeta, Iterator[FrameBlock]]:
    """Decode a video as it streams: its metadata now, its kept frames in blocks as they decode.

    Frames come out upright (the rotation metadata applied) in square pixels, brought to ``size``
    by ``resize`` (:func:`decode_framing`, :mod:`geo4d.framing`: ``crop``, ``pad`` or ``stretch``),
    each with its presentation time, so variable-frame-rate videos keep their timing.

    The file is probed at once (a missing or unreadable file raises here); the blocks come from
    a generator that holds at most one block of kept frames, so memory does not grow with the
    video's length. A stream that breaks off, or stops short of the declared frame count, raises
    :class:`InputError` from the generator **after** the blocks before it: a consumer that stores
    blocks must treat them as provisional until the generator is exhausted.

    Args:
        path, size, stride, max_frames, progress: as for :func:`read_video`.
        block: kept frames per yielded block (the last may be shorter).
        resize: how frames are brought to ``size`` (ignored when ``size`` is None).

    Returns:
        the container's :class:`VideoMeta`, and an iterator of :class:`FrameBlock` (n ≤ ``block``).

    Raises:
        InputError: missing file or not a video (at once); truncated stream (from the iterator).
    """
    if stride < 1:
        raise InputError(f"frame stride must be >= 1, got {stride}")
    if block < 1:
        raise ValueError(f"block: expected >= 1, got {block}")
    meta = probe_video(path)
    framing = decode_framing(meta, size, resize)
    return meta, _blocks(path, meta, framing, stride, max_frames, progress, block)


def _blocks(path, meta: VideoMeta, framing: Framing, stride: int, max_frames: int | None,
            progress: Callable[[int, int], None] | None, block: int) -> Iterator[FrameBlock]:
    """The generator behind :func:`stream_video` (every frame is decoded; every ``stride``-th kept)."""
    import av

    pending: list[np.ndarray] = []
    times: list[float] = []
    kept = decoded = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                decoded += 1
                if (decoded - 1) % stride:
                    continue
                pending.append(_upright(frame, meta, framing))
                times.append(frame.time if frame.time is not None else (decoded - 1) / (meta.fps or 1.0))
                kept += 1
                if progress is not None and kept % 16 == 0:
                    progress(kept, meta.n_frames // stride)
                if len(pending) == block:
                    yield FrameBlock(np.stack(pending), np.asarray(times))
                    pending, times = [], []
                if max_frames is not None and kept >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: video stream breaks off after {decoded} frames ({_reason(exc)}); truncated or corrupt") from exc
    if not kept:
        raise InputError(f"{path}: no decodable frames")
    if max_frames is None and meta.n_frames and decoded < meta.n_frames - 1:
        raise InputError(f"{path}: decoded {decoded} of {meta.n_frames} declared frames; truncated or corrupt")
    if pending:
        yield FrameBlock(np.stack(pending), np.asarray(times))


def _upright(frame, meta: VideoMeta, framing: Framing) -> np.ndarray:
    """One decoded frame as (H, W, 3) uint8 RGB: scaled by FFmpeg's scaler to the framing's scaled
    size (in coded orientation), turned upright, then cropped or padded to the network size."""
    Hr, Wr = framing.scaled_size
    turn = (framing.rotation // 90) % 4
    h, w = (Wr, Hr) if turn % 2 else (Hr, Wr)
    if (h, w) == (meta.height, meta.width):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(width=w, height=h, format="rgb24")
    if turn:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=turn))  # counter-clockwise, as the display matrix says
    return rgb if framing.size == framing.scaled_size else framing.place(rgb)


def read_video(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    resize: str = "crop",
) -> tuple[np.ndarray, VideoMeta]:
    """Decode a whole video into memory (:func:`stream_video` decodes it block by block).

    Args:
        path: video file.
        size: (H, W) to bring every frame to (FFmpeg's scaler, then ``resize``), or None to keep it.
        stride: keep every ``stride``-th frame (every frame is still decoded).
        max_frames: stop after this many kept frames.
        progress: called as ``progress(kept_frames, declared_total)`` every 16 frames.
        resize: ``crop`` (default), ``pad`` or ``stretch`` (:mod:`geo4d.framing`).

    Returns:
        frames (T, H, W, 3) uint8, and the container's :class:`VideoMeta`.

    Raises:
        InputError: missing file, not a video, or a stream that breaks off (truncated file).
    """
    meta, blocks = stream_video(path, size=size, stride=stride, max_frames=max_frames, progress=progress,
                                resize=resize)
    return np.concatenate([b.frames for b in blocks]), meta


def average_rate(times: np.ndarray) -> float:
    """Frames per second of frames presented at ``times`` (s): ``(T − 1) / (t_last − t_first)``; 0 when
    that is undefined (one frame, or no time elapsed)."""
    span = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0
