"""The one geometry record of a video: :class:`Geometry`.

Synthetic scenes, ground truth, benchmark ingest and the fused reconstruction all hand geometry
around as this record; the store's on-disk names live in :mod:`storage` alone. Conventions are
those of :mod:`geo4d.cameras`: OpenCV axes, camera-to-world ``world_from_cam``, frame 0 is the world
frame.

Example:
    >>> import numpy as np
    >>> depth = np.full((2, 3, 4), 2.0, np.float32)
    >>> K = np.tile(np.array([[4.0, 0, 2], [0, 4, 1.0], [0, 0, 1]]), (2, 1, 1))
    >>> g = Geometry.from_depth(depth, K, np.tile(np.eye(4), (2, 1, 1)))
    >>> g.n_frames, g.height, g.width, bool(g.valid.all())
    (2, 3, 4, True)
    >>> g.points_world()[0, 1, 2].tolist()  # the pixel on the optical axis, 2 units ahead
    [0.0, 0.0, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geo4d.cameras import check_shape, transform_points, unproject_depth

__all__ = ["Geometry"]


@dataclass
class Geometry:
    """Per-frame geometry of a video of T frames at H×W.

    Attributes:
        depth: (T, H, W) float32 z-depth along the optical axis. Where ``valid`` is False the value
            is the producer's marker (ground truth: ``+inf`` at sky; fusion: 0) and means nothing.
        valid: (T, H, W) bool, True where ``depth`` is a surface.
        intrinsics: (T, 3, 3) float64 pinhole ``K`` per frame (pixel centres at integer u, v).
        world_from_cam: (T, 4, 4) float64 camera-to-world; ``world_from_cam[0]`` is the identity.
        points: (T, H, W, 3) world points, or None (derive them with :meth:`points_world`).
        confidence: (T, H, W) float32 ≥ 0, 0 exactly where not valid, or None.
        dynamic_mask: (T, H, W) bool, True on independently moving objects, or None.
        fps: frame rate of the video it belongs to, or None.
        meta: provenance (generator, seed, source …), JSON-able.
    """

    depth: np.ndarray
    valid: np.ndarray
    intrinsics: np.ndarray
    world_from_cam: np.ndarray
    points: np.ndarray | None = None
    confidence: np.ndarray | None = None
    dynamic_mask: np.ndarray | None = None
    fps: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if np.ndim(self.depth) != 3:
            raise ValueError(f"depth: expected shape (T, H, W), got {np.shape(self.depth)}")
        T, H, W = np.shape(self.depth)
        check_shape(self.valid, (T, H, W), "valid")
        check_shape(self.intrinsics, (T, 3, 3), "intrinsics")
        check_shape(self.world_from_cam, (T, 4, 4), "world_from_cam")
        for name, shape in (("points", (T, H, W, 3)), ("confidence", (T, H, W)), ("dynamic_mask", (T, H, W))):
            if getattr(self, name) is not None:
                check_shape(getattr(self, name), shape, name)

    @classmethod
    def from_depth(cls, depth: np.ndarray, intrinsics: np.ndarray, world_from_cam: np.ndarray, **kw) -> Geometry:
        """A record whose valid mask is where ``depth`` is finite and positive."""
        depth = np.asarray(depth)
        return cls(depth, np.isfinite(depth) & (depth > 0), intrinsics, world_from_cam, **kw)

    @property
    def n_frames(self) -> int:
        return int(self.depth.shape[0])

    @property
    def height(self) -> int:
        return int(self.depth.shape[1])

    @property
    def width(self) -> int:
        return int(self.depth.shape[2])

    def points_world(self) -> np.ndarray:
        """(T, H, W, 3) float64 world points ``world_from_cam · depth K⁻¹ [u, v, 1]ᵀ``; NaN where not valid."""
        d = np.where(self.valid, self.depth, np.nan).astype(np.float64)
        return transform_points(self.world_from_cam, unproject_depth(d, self.intrinsics))
