"""An interactive 3D view of a reconstruction, logged with Rerun (pure: arrays in, Rerun calls out; no store).

Why Rerun: a recording is a file (``.rrd``) that can be written on a cluster node, opened later,
shared, viewed natively (``rerun FILE.rrd``) or in a browser (Rerun's web viewer server); the time
slider over the video's frames is built in; and the recording is data, read back with
:class:`rerun.chunk.RrdReader`, so what the view shows is tested without a display or a browser
(``tests/test_viewer.py``).

Entities (world axes OpenCV: x right, y down, z forward, ``rr.ViewCoordinates.RDF``; frame 0 is the
world frame):

* ``world/points`` per frame: ``rr.Points3D``, the fused world points of the frame that are valid and
  at least :func:`confidence_threshold` confident, at most ``max_points`` of them
  (:func:`select_points`), coloured by RGB or confidence;
* ``world/camera`` per frame: ``rr.Transform3D`` (``world_from_cam``) and ``rr.Pinhole`` (the frustum);
  ``world/camera/image`` the RGB frame, ``world/camera/depth`` the depth (0 where not valid);
* ``world/camera_path`` (static): the camera centres as one ``rr.LineStrips3D``;
* ``description`` (static): what the recording shows (``rr.TextDocument``), e.g. that the predictor
  was the synthetic test instrument.

Timelines: ``frame`` (sequence) and, with a known fps, ``time`` (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geo4d.geometry import Geometry

__all__ = ["COLOR_MODES", "DEFAULT_MAX_POINTS", "DEFAULT_DROP_LOW_CONFIDENCE", "ViewOptions",
           "confidence_threshold", "select_points", "confidence_colors", "frame_cloud", "log_reconstruction",
           "open_recording"]

COLOR_MODES = ("rgb", "confidence")
#: Points shown per frame at most (a 320×512 frame has 164k pixels; 20k keep a long video fluid).
DEFAULT_MAX_POINTS = 20_000
#: Fraction of the video's valid points, the least confident, not shown.
DEFAULT_DROP_LOW_CONFIDENCE = 0.1


@dataclass(frozen=True)
class ViewOptions:
    """What :func:`log_reconstruction` shows: ``color`` one of :data:`COLOR_MODES`; per frame at most
    ``max_points`` points; the ``drop_low_confidence`` least confident fraction of the video's valid
    points hidden; RGB frames JPEG-compressed at ``jpeg_quality`` (None: raw)."""

    color: str = "rgb"
    max_points: int = DEFAULT_MAX_POINTS
    drop_low_confidence: float = DEFAULT_DROP_LOW_CONFIDENCE
    jpeg_quality: int | None = 90

    def __post_init__(self) -> None:
        if self.color not in COLOR_MODES:
            raise ValueError(f"color: expected one of {COLOR_MODES}, got {self.color!r}")
        if self.max_points < 1:
            raise ValueError(f"max_points: expected >= 1, got {self.max_points}")
        if not 0.0 <= self.drop_low_confidence < 1.0:
            raise ValueError(f"drop_low_confidence: expected a fraction in [0, 1), got {self.drop_low_confidence}")


def confidence_threshold(confidence: np.ndarray, valid: np.ndarray, drop: float) -> float:
    """The least confidence shown: the ``drop`` quantile of the valid confidences (inf: none valid).

    Args:
        confidence: (T, H, W) or any shape, ≥ 0.
        valid: bool, the same shape.

    >>> c = np.array([0.0, 1, 2, 3, 5]); v = c > 0
    >>> confidence_threshold(c, v, 0.0), confidence_threshold(c, v, 0.5)
    (1.0, 2.5)
    """
    values = np.asarray(confidence)[np.asarray(valid, bool)]
    return float(np.quantile(values, drop)) if values.size else float("inf")


def select_points(valid: np.ndarray, confidence: np.ndarray, threshold: float, max_points: int) -> np.ndarray:
    """Row-major flat indices of the pixels shown: valid and ``confidence >= threshold``; of more than
    ``max_points`` such pixels, ``max_points`` evenly spaced ones (first and last kept).

    Args:
        valid: (H, W) bool; confidence: (H, W).
    Returns:
        (N,) int64 indices into the flattened (H·W) frame, ascending, N ≤ max_points.

    >>> v = np.ones((2, 5), bool); c = np.arange(10.0).reshape(2, 5)
    >>> select_points(v, c, 2.0, 3).tolist()
    [2, 6, 9]
    """
    idx = np.flatnonzero(np.asarray(valid, bool) & (np.asarray(confidence) >= threshold))
    if idx.size > max_points:
        idx = idx[np.linspace(0, idx.size - 1, max_points).round().astype(np.int64)]
    return idx


def confidence_colors(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(N,) confidences as (N, 3) uint8 viridis colours, ``low`` dark blue … ``high`` yellow.

    >>> confidence_colors(np.array([0.0, 1.0]), 0.0, 1.0).tolist()
    [[68, 1, 84], [253, 231, 37]]
    """
    from matplotlib import colormaps

    t = np.clip((np.asarray(values, np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
    return (colormaps["viridis"](t)[:, :3] * 255).round().astype(np.uint8)


def frame_cloud(geometry: Geometry, frames: np.ndarray, k: int, opts: ViewOptions,
                threshold: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``k``'s shown points: (N, 3) float32 world positions and (N, 3) uint8 colours.

    Args:
        geometry: the fused record (``points`` and ``confidence`` set).
        frames: (T, H, W, 3) uint8 RGB.
        threshold: least confidence shown; high: the confidence coloured yellow.
    """
    conf = geometry.confidence[k]
    idx = select_points(geometry.valid[k], conf, threshold, opts.max_points)
    positions = geometry.points[k].reshape(-1, 3)[idx].astype(np.float32)
    if opts.color == "rgb":
        colors = np.asarray(frames[k], np.uint8).reshape(-1, 3)[idx]
    else:
        colors = confidence_colors(conf.reshape(-1)[idx], threshold, high)
    return positions, colors


def _static(rec, geometry: Geometry, description: str) -> None:
    import rerun as rr

    rec.log("world", rr.ViewCoordinates.RDF, static=True)
    centres = geometry.world_from_cam[:, :3, 3].astype(np.float32)
    rec.log("world/camera_path", rr.LineStrips3D([centres], colors=[[255, 80, 40]]), static=True)
    if description:
        rec.log("description", rr.TextDocument(description, media_type=rr.MediaType.MARKDOWN), static=True)


def _log_frame(rec, geometry: Geometry, frames: np.ndarray, k: int, fps: float, opts: ViewOptions,
               levels: tuple[float, float, float]) -> None:
    """Log frame ``k``: points, camera pose and frustum, RGB and depth images; ``levels``: (threshold,
    high, frustum image-plane distance)."""
    import rerun as rr

    rec.set_time("frame", sequence=k)
    if fps > 0:
        rec.set_time("time", duration=k / fps)
    positions, colors = frame_cloud(geometry, frames, k, opts, levels[0], levels[1])
    rec.log("world/points", rr.Points3D(positions, colors=colors))
    pose = geometry.world_from_cam[k]
    rec.log("world/camera", rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
    rec.log("world/camera", rr.Pinhole(image_from_camera=geometry.intrinsics[k], width=geometry.width,
                                       height=geometry.height, camera_xyz=rr.ViewCoordinates.RDF,
                                       image_plane_distance=levels[2]))
    image = rr.Image(np.ascontiguousarray(frames[k], np.uint8))
    rec.log("world/camera/image", image.compress(jpeg_quality=opts.jpeg_quality) if opts.jpeg_quality else image)
    depth = np.where(geometry.valid[k], geometry.depth[k], 0.0).astype(np.float32)
    rec.log("world/camera/depth", rr.DepthImage(depth, meter=1.0))


def log_reconstruction(rec, geometry: Geometry, frames: np.ndarray, *, fps: float = 0.0,
                       opts: ViewOptions = ViewOptions(), description: str = "") -> None:
    """Log a whole reconstruction to the Rerun recording ``rec`` (entities: module docstring).

    Args:
        geometry: fused geometry of T frames at H×W (``points``, ``confidence`` set; world = frame 0).
        frames: (T, H, W, 3) uint8 RGB of the same frames.
        fps: the video's frame rate (0: unknown, no ``time`` timeline).
        description: markdown logged as the static ``description`` document.
    """
    if geometry.points is None or geometry.confidence is None:
        raise ValueError("geometry: points and confidence are needed for the view")
    if np.shape(frames)[:3] != geometry.depth.shape:
        raise ValueError(f"frames: expected shape {geometry.depth.shape + (3,)}, got {np.shape(frames)}")
    _static(rec, geometry, description)
    threshold = confidence_threshold(geometry.confidence, geometry.valid, opts.drop_low_confidence)
    high = float(geometry.confidence.max()) if geometry.valid.any() else 1.0
    depths = geometry.depth[geometry.valid]
    plane = 0.1 * float(np.median(depths)) if depths.size else 0.1
    for k in range(geometry.n_frames):
        _log_frame(rec, geometry, frames, k, fps, opts, (threshold, high, plane))


def open_recording(name: str, *, save: str | Path | None = None, web: bool = False, web_port: int = 9090,
                   grpc_port: int = 9876, open_browser: bool = True):
    """A Rerun recording named ``name`` and the viewer address, if any: written to ``save`` (.rrd),
    served to a browser (``web``: a gRPC server on ``grpc_port`` and Rerun's web viewer on
    ``web_port``), or — with neither — streamed to a spawned native viewer.

    Returns:
        (recording, url): url is the web viewer's address with ``web``, else None. Serving lasts as
        long as this process and the recording do.
    """
    from urllib.parse import quote

    import rerun as rr

    rec = rr.RecordingStream("geo4d")
    if not save and not web:
        rec.spawn()
        rec.send_recording_name(name)
        return rec, None
    sinks: list = [rr.FileSink(str(save))] if save else []
    if web:
        sinks.append(rr.GrpcServerSink(bind_ip="127.0.0.1", port=grpc_port, server_memory_limit="50%"))
    rec.set_sinks(*sinks)
    rec.send_recording_name(name)
    if not web:
        return rec, None
    uri = sinks[-1].uri
    rr.serve_web_viewer(web_port=web_port, open_browser=open_browser, connect_to=uri)
    return rec, f"http://localhost:{web_port}/?url={quote(uri, safe='')}"
