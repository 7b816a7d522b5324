"""Settings and result of the multi-window fusion (see docs/fusion.md for the model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geo4d.errors import InputError

__all__ = ["FusionConfig", "FusionResult"]


@dataclass(frozen=True)
class FusionConfig:
    """Settings of :func:`geo4d.fusion.fuse`. Every field is JSON-able.

    The four terms of the Geo4D objective, each a non-negative weight (0 switches the term off):

    Attributes:
        alpha_pointmap: point-map alignment (α₁), weighted per pixel by the point-map confidence.
            It carries the only depth that is known up to a scale alone, so it must stay > 0.
        alpha_disparity: disparity alignment (α₂): a per-window affine map of the disparity, fitted
            robustly, gives a second depth estimate fused with the point-map depth.
        alpha_rays: ray-map camera alignment (α₃): cameras recovered from each window's Plücker maps
            (rotation and intrinsics from the directions, centre from the moments) aligned to the
            global trajectory with the window's rigid transform and their own scale.
        alpha_smooth: trajectory smoothness (α₄): constant-velocity prior on the rotation and the
            camera centre (second differences), with the scales ``smooth_rot_deg`` and
            ``smooth_trans``.

    Intrinsics:
        shared_focal: one focal length for the whole video (default); False estimates one per frame.
        estimate_principal_point: estimate ``(cx, cy)`` (shared by all frames); False fixes it at the
            image centre ``((W−1)/2, (H−1)/2)``.
        pointmap_z_offset: the point maps carry an unknown per-window offset along z (as the Geo4D
            network's de-normalised maps do); estimate it with the focal length.

    Robustness and solver:
        conf_clip: point-map confidences are clipped at this value before use as weights.
        disparity_min: disparity values ``<=`` this are invalid (None: only exact zeros are).
        robust_scale: Cauchy scale of the per-(window, frame) robust weights, in units of the
            robust spread of the residuals (smaller = more aggressive down-weighting).
        outlier_weight: a (window, frame) pair whose robust weight falls below this is reported as an
            outlier, and its window as inconsistent, in the diagnostics.
        smooth_rot_deg: expected size (degrees) of the frame-to-frame change of angular velocity.
        smooth_trans: expected size of the frame-to-frame change of camera velocity, as a fraction
            of the scene depth.
        iterations: maximum Gauss-Newton/Levenberg-Marquardt iterations of the global refinement.
        robust_rounds: outer re-weighting rounds (IRLS) around the refinement.
        samples_per_frame: pixels per frame (a regular grid) used to estimate cameras and scales;
            the final depth uses every pixel.
        depth_spread: log-depth spread (≈ relative depth disagreement) at which the output
            confidence of a pixel halves.
    """

    alpha_pointmap: float = 1.0
    alpha_disparity: float = 1.0
    alpha_rays: float = 1.0
    alpha_smooth: float = 1.0
    shared_focal: bool = True
    estimate_principal_point: bool = True
    pointmap_z_offset: bool = False
    conf_clip: float = 10.0
    disparity_min: float | None = None
    robust_scale: float = 4.0
    outlier_weight: float = 0.25
    smooth_rot_deg: float = 0.05
    smooth_trans: float = 0.001
    iterations: int = 20
    robust_rounds: int = 3
    samples_per_frame: int = 768
    depth_spread: float = 0.05

    def __post_init__(self) -> None:
        for name in ("alpha_pointmap", "alpha_disparity", "alpha_rays", "alpha_smooth"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise InputError(f"fusion: {name} must be a number >= 0, got {v!r}")
        if self.alpha_pointmap <= 0:
            raise InputError(
                "fusion: alpha_pointmap must be > 0 (the point maps carry the only depth known up to a "
                "scale; disparity alone has an unknown per-window shift)"
            )
        for name in ("conf_clip", "robust_scale", "smooth_rot_deg", "smooth_trans", "depth_spread"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise InputError(f"fusion: {name} must be a number > 0, got {v!r}")
        if not (isinstance(self.outlier_weight, (int, float)) and 0 <= self.outlier_weight <= 1):
            raise InputError(f"fusion: outlier_weight must be in [0, 1], got {self.outlier_weight!r}")
        for name, lo in (("iterations", 0), ("robust_rounds", 1), ("samples_per_frame", 16)):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise InputError(f"fusion: {name} must be an integer >= {lo}, got {v!r}")
        if self.disparity_min is not None and not np.isfinite(self.disparity_min):
            raise InputError(f"fusion: disparity_min must be a finite number or null, got {self.disparity_min!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> FusionConfig:
        """Build from a JSON-able dict, with a one-line error naming unknown keys."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"fusion: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FusionResult:
    """One consistent reconstruction of a video from its windows.

    Attributes:
        depth: (T, H, W) float32 z-depth; 0 where no window has a valid prediction (sky, invalid).
        confidence: (T, H, W) float32 ≥ 0; 0 exactly where ``depth`` is 0.
        intrinsics: (T, 3, 3) float64 pinhole ``K`` per frame (the same for all frames when the focal
            is shared).
        world_from_cam: (T, 4, 4) float64 camera-to-world poses; ``world_from_cam[0]`` is the identity.
        points: (T, H, W, 3) float32 world points ``world_from_cam · depth K⁻¹ [u, v, 1]ᵀ``; 0 where
            ``confidence`` is 0.
        diagnostics: JSON-able record: scale gauge, per-window weights, outlier flags, scales, residuals,
            solver iterations and timings (see docs/fusion.md).

    Scale gauge: the median valid depth of frame 0 is 1 (if frame 0 has no valid pixel, the median
    valid depth of the whole video is 1).
    """

    depth: np.ndarray
    confidence: np.ndarray
    intrinsics: np.ndarray
    world_from_cam: np.ndarray
    points: np.ndarray
    diagnostics: dict = field(default_factory=dict)
