"""Settings and result of the multi-window fusion (see docs/fusion.md for the model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from geo4d.geometry import Geometry
from geo4d.spec import Spec

__all__ = ["FusionConfig", "FusionResult"]


def _number(v: Any) -> Any:
    """Refuse what only coerces to a number (``True``, ``"1"``): settings are numbers."""
    if isinstance(v, (bool, str, bytes)):
        raise PydanticCustomError("number_type", "must be a number, not {kind}", {"kind": type(v).__name__})
    return v


#: A finite float setting given as a number (bools and strings refused).
Number = Annotated[float, BeforeValidator(_number)]
#: An integer setting given as a number (bools, strings and fractional values refused).
Count = Annotated[int, BeforeValidator(_number)]


class FusionConfig(Spec):
    """Settings of :func:`geo4d.fusion.fuse` (a :class:`geo4d.spec.Spec`: frozen, unknown keys
    refused; ``FusionConfig.parse(mapping)`` gives one-line errors). Every field is JSON-able.

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
        focal: ``"auto"`` (default), ``"shared"`` or ``"per_frame"`` — the focal length (``fx = fy``)
            of the frames. ``shared``: one for the whole video (robust median over windows and
            modalities). ``per_frame``: one per frame, the per-(window, frame) estimates (point-map
            PnP with a free focal, and per-frame ray intrinsics) smoothed over time by a robust
            smoother whose scale is chosen by cross-validation over windows
            (:mod:`geo4d.fusion.focal`). ``auto``: per-frame when the windows' focal estimates change
            over the video beyond their disagreement about the same frame (a zoom), else shared.
            The legacy boolean ``shared_focal`` is still accepted: true (the old default) means
            ``auto``, false ``per_frame``; the fingerprint keeps its old form for those two
            (``shared_focal: true`` / ``false``), so fusions recorded with the defaults keep their
            fingerprints, and records ``focal: "shared"`` for the new explicit choice.
        estimate_principal_point: estimate ``(cx, cy)`` (shared by all frames); False fixes it at the
            image centre ``((W−1)/2, (H−1)/2)``.
        pointmap_z_offset: the point maps carry an unknown per-window offset along z (as the Geo4D
            network's de-normalised maps do); estimate it with the focal length. None (the default):
            as the windows' predictor says (:attr:`geo4d.predictor.WindowPredictor.pointmap_z_offset`;
            the pipeline's fuse stage reads it from the store); :func:`geo4d.fusion.fuse` called
            directly treats None as False, so pass ``predictor.pointmap_z_offset`` there.

    Robustness and solver:
        conf_clip: point-map confidences are clipped at this value before use as weights.
        disparity_min: disparity values ``<=`` this are invalid (None: only exact zeros are).
        robust_scale: Cauchy scale of the per-(window, frame) robust weights, in units of the
            robust spread of the residuals (smaller = more aggressive down-weighting).
        outlier_weight: a (window, frame) pair whose robust weight falls below this is reported as an
            outlier, and its window as inconsistent, in the diagnostics.
        smooth_auto: choose the smoothness scales per video and per frame from the data (default):
            each robust round sets a frame's prior variance from the acceleration the previous round
            fitted around it (frames i−2 … i+2; docs/fusion.md, global refinement), so a real
            turn that every window sees widens the prior there while independent per-window jitter,
            averaged out by the fit, leaves it at its floor ``smooth_rot_deg``/``smooth_trans``;
            False: use ``smooth_rot_deg``/``smooth_trans`` everywhere.
        consensus_init: start the refinement from a robust consensus of every window that sees a
            frame (default), not from the chained placement alone; False: the chain.
        smooth_rot_deg: per-axis std (degrees) of the frame-to-frame change of angular velocity
            assumed by the prior — its floor when ``smooth_auto``, its value otherwise.
        smooth_trans: per-axis std of the frame-to-frame change of camera velocity, as a fraction
            of the scene depth.
        iterations: maximum Gauss-Newton/Levenberg-Marquardt iterations of the global refinement.
        robust_rounds: outer re-weighting rounds (IRLS) around the refinement.
        samples_per_frame: pixels per frame (a regular grid) used to estimate cameras and scales;
            the final depth uses every pixel.
        depth_spread: log-depth spread (≈ relative depth disagreement) at which the output
            confidence of a pixel halves.
        disparity_only_depth: pixels where no window's point map is valid (confidence 0) but a
            window's disparity is, take their depth from the disparity alone, through each window's
            fitted affine map, fused robustly over the windows (``FusionResult.depth_source`` = 2;
            needs ``alpha_disparity > 0``). Sky stays invalid: disparity 0 (or ``<= disparity_min``),
            or the affine map giving no positive inverse depth, gives no depth.
        disparity_only_max_error: a disparity-only depth is kept where its predicted log-depth error
            (the window's disparity residual spread carried through its affine map,
            ``σ_disp / (disp − b)``, at least the fit's log-depth spread) is at most this, and the
            fused pixel where the windows' disparity-only log depths agree within this (weighted
            spread); otherwise (disparity too close to the map's far end, e.g. sky the point map
            missed, or windows that disagree) the pixel stays invalid. 0.25 ≈ 28 % depth error.

    Known camera:
        intrinsics: ``(fx, fy, cx, cy)`` in the windows' (network) pixels, or None (estimate them).
            When given, K is fixed at that value for every frame: the focal length and principal point
            are not estimated, and cameras are solved with it (``focal`` is then ignored).
    """

    alpha_pointmap: Number = Field(1.0, ge=0, allow_inf_nan=False)
    alpha_disparity: Number = Field(1.0, ge=0, allow_inf_nan=False)
    alpha_rays: Number = Field(1.0, ge=0, allow_inf_nan=False)
    alpha_smooth: Number = Field(1.0, ge=0, allow_inf_nan=False)
    focal: Literal["auto", "shared", "per_frame"] = "auto"
    estimate_principal_point: bool = True
    pointmap_z_offset: bool | None = None
    conf_clip: Number = Field(10.0, gt=0, allow_inf_nan=False)
    disparity_min: Number | None = Field(None, allow_inf_nan=False)
    robust_scale: Number = Field(4.0, gt=0, allow_inf_nan=False)
    outlier_weight: Number = Field(0.25, ge=0, le=1)
    smooth_auto: bool = True
    consensus_init: bool = True
    smooth_rot_deg: Number = Field(0.05, gt=0, allow_inf_nan=False)
    smooth_trans: Number = Field(0.002, gt=0, allow_inf_nan=False)
    iterations: Count = Field(20, ge=0)
    robust_rounds: Count = Field(3, ge=1)
    samples_per_frame: Count = Field(768, ge=16)
    depth_spread: Number = Field(0.05, gt=0, allow_inf_nan=False)
    disparity_only_depth: bool = True
    disparity_only_max_error: Number = Field(0.25, gt=0, allow_inf_nan=False)
    intrinsics: tuple[Number, Number, Number, Number] | None = None

    #: Settings added after fusions were first recorded, and the value at which they are left out of
    #: the fingerprint (their default), so those fusions keep their fingerprints.
    FINGERPRINT_OMITTED_AT: ClassVar[dict[str, Any]] = {
        "intrinsics": None, "disparity_only_depth": True, "disparity_only_max_error": 0.25,
    }

    def fingerprint_dict(self) -> dict[str, Any]:
        """As :meth:`Spec.fingerprint_dict`, without the settings of :attr:`FINGERPRINT_OMITTED_AT`
        while at their defaults, so fusions recorded before those settings existed keep their
        fingerprints; ``focal`` in the old ``shared_focal`` form where it has one (``auto`` →
        ``shared_focal: true``, the old default's record; ``per_frame`` → ``false``; ``shared`` →
        ``focal: "shared"``)."""
        out = super().fingerprint_dict()
        for name, default in self.FINGERPRINT_OMITTED_AT.items():
            if name in out and out[name] == default:
                out.pop(name)
        focal = out.pop("focal")  # the old key where it can say it (see the ``focal`` attribute)
        out.update({"shared_focal": focal == "auto"} if focal != "shared" else {"focal": focal})
        return out

    @model_validator(mode="before")
    @classmethod
    def _legacy_shared_focal(cls, data: Any) -> Any:
        """Old configs' ``shared_focal``: true (the old default) → ``focal="auto"``, false → ``"per_frame"``."""
        if not isinstance(data, dict) or "shared_focal" not in data:
            return data
        data = dict(data)
        old = data.pop("shared_focal")
        if not isinstance(old, bool):
            raise PydanticCustomError("shared_focal", "shared_focal: must be true or false, got {got} "
                                      "(prefer focal: auto | shared | per_frame)", {"got": repr(old)})
        if "focal" in data:
            raise PydanticCustomError("shared_focal", "give focal or the legacy shared_focal, not both")
        data["focal"] = "auto" if old else "per_frame"
        return data

    @field_validator("intrinsics")
    @classmethod
    def _positive_focal(cls, v):
        """Known ``(fx, fy, cx, cy)``: both focal lengths > 0 and finite."""
        if v is not None and (not all(np.isfinite(x) for x in v) or min(v[0], v[1]) <= 0):
            raise PydanticCustomError("intrinsics", "expected fx, fy > 0 and finite fx, fy, cx, cy")
        return v

    @field_validator("alpha_pointmap")
    @classmethod
    def _pointmap_term_on(cls, v: float) -> float:
        """α₁ > 0: without the point maps no depth is known up to a scale alone."""
        if v <= 0:
            raise PydanticCustomError(
                "greater_than",
                "must be > 0 (the point maps carry the only depth known up to a scale; disparity alone "
                "has an unknown per-window shift)",
            )
        return v


@dataclass
class FusionResult:
    """One consistent reconstruction of a video from its windows.

    Attributes:
        geometry: the fused :class:`geo4d.geometry.Geometry`:

            * ``depth`` (T, H, W) float32 z-depth; 0 where no window has a valid prediction (sky, invalid);
            * ``valid`` = ``confidence > 0``; ``confidence`` (T, H, W) float32 ≥ 0, 0 exactly where depth is 0;
            * ``intrinsics`` (T, 3, 3) float64 pinhole ``K`` per frame (the same for all frames when the
              focal is shared);
            * ``world_from_cam`` (T, 4, 4) float64 camera-to-world poses, ``[0]`` the identity;
            * ``points`` (T, H, W, 3) float32 world points ``world_from_cam · depth K⁻¹ [u, v, 1]ᵀ``, 0
              where ``confidence`` is 0.
        diagnostics: JSON-able record: scale gauge, per-window weights, outlier flags, scales, residuals,
            solver iterations and timings (see docs/fusion.md).
        depth_source: (T, H, W) uint8, which modality gave each pixel its depth
            (:class:`geo4d.fusion.depth.DepthSource`): 0 none (depth 0), 1 point map (with or without
            disparity), 2 disparity only (no window's point map is valid there); None when unknown
            (results made before the map existed).

    Scale gauge: the median depth of frame 0's point-map pixels (``depth_source`` 1) is 1 (if frame 0
    has none, the median over the whole video's); disparity-only pixels do not move the gauge.
    """

    geometry: Geometry
    diagnostics: dict = field(default_factory=dict)
    depth_source: np.ndarray | None = None
