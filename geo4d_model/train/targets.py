"""Ground truth → the Geo4D modality targets, exactly as inference reads them back.

One clip of V frames (RGB, z-depth, intrinsics, camera-to-world poses) becomes the training sample
of :mod:`geo4d_model.train` (sample layout: :func:`clip_targets`). Every map lives in the camera
frame of the clip's FIRST frame (``ref``), OpenCV axes (x right, y down, z forward), pixel centres
at integer ``(u, v)`` (:mod:`geo4d.cameras`):

* points ``X_i(u, v) = ref_from_cam_i · (z K_i⁻¹ [u, v, 1]ᵀ)`` with
  ``ref_from_cam_i = inv(world_from_cam_0) · world_from_cam_i``;
* point map (:func:`normalise_pointmap`), window normaliser of the released code
  (``normalize_pointcloud_bbox2``, FACTS_rays.md §5): ``lower = z₂ − 0.01``,
  ``s = z₉₈ − z₂ + 0.02`` (2nd/98th percentiles of the valid points' z over the clip),
  ``(x, y, z) → (2x/s, 2y/s, 2(z − lower)/s − 1)``, invalid 1.05, clamp [−2, 2]; its inverse
  :func:`denormalise_pointmap` is inference's ``(x/2, y/2, (z + 1)/2)``
  (:func:`geo4d_model.postprocess.postprocess_window`), i.e. ``(x/s, y/s, (z − lower)/s)``;
* disparity (:func:`normalise_disparity`): ``δ = 1/z`` of each frame's own depth,
  ``2(δ − lower_d)/s_d − 1`` with ``lower_d = δ₂ − 0.01``, ``s_d = δ₉₈ − δ₂ + 0.02``, invalid −1.05,
  clamp [−1.1, 1.1]; inference reads ``(d + 1)/2`` (:func:`denormalise_disparity`);
* Plücker rays (:func:`ray_targets`): unit directions ``d`` and moments ``m = (c/s) × d``, with the
  camera centre ``c`` in ``ref`` divided by the point map's ``s`` — the units of the de-normalised
  point map, so the cameras recovered from the rays (``traj``) and the point map agree.

:func:`decoded_from_targets` assembles what a perfect network would decode (11 channels), so the
whole chain can be checked by running it through inference's post-processing.

Example:
    >>> rng = np.random.default_rng(0)
    >>> depth = rng.uniform(2.0, 6.0, (2, 4, 6)).astype(np.float32); depth[:, 0, 0] = np.inf  # sky
    >>> K = np.array([[5.0, 0, 2.5], [0, 5.0, 1.5], [0, 0, 1]])
    >>> poses = np.tile(np.eye(4), (2, 1, 1)); poses[1, 0, 3] = 0.3
    >>> s = clip_targets(np.zeros((2, 4, 6, 3), np.uint8), depth, K, poses)
    >>> s["pointmap"].shape, int(s["valid"].sum()), [round(float(x), 4) for x in s["pointmap"][0, :, 0, 0]]  # sky
    ((2, 3, 4, 6), 46, [1.05, 1.05, 1.05])
"""

from __future__ import annotations

import numpy as np

from geo4d.cameras import check_shape, invert_pose, transform_points, unproject_depth
from geo4d.errors import InputError
from geo4d.plucker import plucker_rays

__all__ = [
    "INVALID_POINT", "INVALID_DISPARITY", "clip_targets", "decoded_from_targets", "frames_to_unit_range",
    "relative_poses", "clip_points", "percentile_bounds", "normalise_pointmap", "denormalise_pointmap",
    "normalise_disparity", "denormalise_disparity", "ray_targets", "valid_depth",
]

#: Value of all three point-map channels on invalid (sky) pixels; inference's sky band is centred on it.
INVALID_POINT = 1.05
#: Normalised disparity of invalid pixels.
INVALID_DISPARITY = -1.05
_POINT_CLAMP = 2.0
_DISPARITY_CLAMP = 1.1
_PERCENTILES = (2.0, 98.0)
_MARGIN = 0.01  # the normalisers' margin below the 2nd and above the 98th percentile


def frames_to_unit_range(frames_u8: np.ndarray) -> np.ndarray:
    """uint8 RGB (V, H, W, 3) → float32 (V, 3, H, W) ``(u8/255 − 0.5)·2`` ∈ [−1, 1], the network's
    input (the same values as :func:`geo4d_model.predictor.frames_to_model_input` without resizing)."""
    check_shape(frames_u8, (None, None, None, 3), "frames")
    if frames_u8.dtype != np.uint8:
        raise InputError(f"frames: expected uint8 RGB, got {frames_u8.dtype}")
    x = np.moveaxis(frames_u8, -1, 1).astype(np.float32)
    return (x / np.float32(255.0) - np.float32(0.5)) * np.float32(2.0)


def valid_depth(depth: np.ndarray) -> np.ndarray:
    """(V, H, W) bool: finite and positive z-depth (sky ``inf``, NaN, 0 and negatives are invalid)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > 0)


def relative_poses(world_from_cam: np.ndarray) -> np.ndarray:
    """(V, 4, 4) camera-to-world → ``ref_from_cam = inv(world_from_cam[0]) · world_from_cam`` float64
    (camera i → the clip's first camera; ``[0]`` is exactly the identity)."""
    check_shape(world_from_cam, (None, 4, 4), "world_from_cam")
    wfc = np.asarray(world_from_cam, dtype=np.float64)
    rel = invert_pose(wfc[0]) @ wfc
    rel[0] = np.eye(4)
    return rel


def clip_points(depth: np.ndarray, valid: np.ndarray, K: np.ndarray, ref_from_cam: np.ndarray) -> np.ndarray:
    """Points (V, H, W, 3) float64 in the first camera's frame, 0 where not ``valid``:
    ``X = ref_from_cam_i · (z K_i⁻¹ [u, v, 1]ᵀ)``. ``K`` (V, 3, 3)."""
    pts_cam = unproject_depth(np.where(valid, depth, 0.0).astype(np.float64), K)
    return np.where(valid[..., None], transform_points(ref_from_cam, pts_cam), 0.0)


def percentile_bounds(values: np.ndarray, name: str) -> tuple[float, float]:
    """``(lower, s) = (q₂ − 0.01, q₉₈ − q₂ + 0.02)`` of the 1-D ``values`` (the valid pixels only).

    Raises :class:`InputError` naming ``name`` when there is no value or no spread (q₉₈ − q₂ ≤ 1e-6
    relative to their magnitude: the normalised map would carry no depth at all)."""
    if values.size == 0:
        raise InputError(f"{name}: no valid depth (every pixel is sky or invalid)")
    q2, q98 = (float(q) for q in np.percentile(values, _PERCENTILES))
    if not np.isfinite([q2, q98]).all() or q98 - q2 <= 1e-6 * max(abs(q2), abs(q98), 1e-12):
        raise InputError(f"{name}: degenerate depth range (2nd/98th percentiles {q2:.6g}, {q98:.6g})")
    return q2 - _MARGIN, q98 - q2 + 2 * _MARGIN


def normalise_pointmap(points: np.ndarray, valid: np.ndarray, lower: float, scale: float) -> np.ndarray:
    """(V, H, W, 3) points → (V, H, W, 3) float32 ``(2x/s, 2y/s, 2(z − lower)/s − 1)``, 1.05 in all
    three channels where not ``valid``, clamped to [−2, 2] (``s`` = ``scale``)."""
    out = np.stack([2 * points[..., 0] / scale, 2 * points[..., 1] / scale,
                    2 * (points[..., 2] - lower) / scale - 1], axis=-1)
    out = np.where(valid[..., None], out, INVALID_POINT)
    return np.clip(out, -_POINT_CLAMP, _POINT_CLAMP).astype(np.float32)


def denormalise_pointmap(pointmap: np.ndarray, scale: float = 1.0, z_lower: float = 0.0) -> np.ndarray:
    """Inverse of :func:`normalise_pointmap` on the last axis (…, 3): inference's
    ``(x/2, y/2, (z + 1)/2)`` (the units of ``s``, z shifted by ``lower``) times ``scale``, plus
    ``z_lower`` on z — with the defaults exactly ``postprocess_window``'s ``pts3d``."""
    pm = np.asarray(pointmap, dtype=np.float64)
    out = np.stack([pm[..., 0] / 2, pm[..., 1] / 2, (pm[..., 2] + 1) / 2], axis=-1) * scale
    out[..., 2] += z_lower
    return out


def normalise_disparity(depth: np.ndarray, valid: np.ndarray, lower: float, scale: float) -> np.ndarray:
    """(V, H, W) z-depth → float32 ``2(1/z − lower)/s_d − 1`` (``s_d`` = ``scale``, bounds from
    :func:`percentile_bounds` of the valid ``1/z``), −1.05 where not ``valid``, clamped to [−1.1, 1.1]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 2 * (1.0 / depth.astype(np.float64) - lower) / scale - 1
    d = np.where(valid, d, INVALID_DISPARITY)
    return np.clip(d, -_DISPARITY_CLAMP, _DISPARITY_CLAMP).astype(np.float32)


def denormalise_disparity(disparity: np.ndarray) -> np.ndarray:
    """Inference's reading of the decoded disparity: ``(d + 1)/2`` = ``(1/z − lower_d)/s_d``."""
    return (np.asarray(disparity, dtype=np.float64) + 1) / 2


def ray_targets(ref_from_cam: np.ndarray, K: np.ndarray, height: int, width: int,
                scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Plücker targets (V, H, W, 3) float32 each: unit ``d = normalize(R_i K_i⁻¹ [u, v, 1]ᵀ)`` and
    ``m = (c_i / s) × d`` (:func:`geo4d.plucker.plucker_rays`, moment divided by the point map's ``s``)."""
    d, m = plucker_rays(ref_from_cam, K, height, width)
    return d.astype(np.float32), (m / scale).astype(np.float32)


def _check_clip(frames_u8: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray,
                world_from_cam: np.ndarray) -> np.ndarray:
    """Shape checks; returns the intrinsics as (V, 3, 3) float64."""
    check_shape(depth, (None, None, None), "depth")
    V, H, W = depth.shape
    check_shape(frames_u8, (V, H, W, 3), "frames")
    check_shape(world_from_cam, (V, 4, 4), "world_from_cam")
    K = np.asarray(intrinsics, dtype=np.float64)
    if K.ndim == 2:
        K = np.broadcast_to(K, (V, 3, 3))
    check_shape(K, (V, 3, 3), "intrinsics")
    return np.ascontiguousarray(K)


def clip_targets(frames_u8: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray, world_from_cam: np.ndarray,
                 name: str = "clip") -> dict[str, np.ndarray]:
    """The training sample of one clip (no batch dimension; V frames of H×W).

    Args:
        frames_u8: (V, H, W, 3) uint8 RGB.
        depth: (V, H, W) z-depth; non-finite or ≤ 0 = invalid (sky).
        intrinsics: (V, 3, 3) or (3, 3) pinhole K.
        world_from_cam: (V, 4, 4) camera-to-world (any world frame; re-expressed relative to frame 0).
        name: names the clip in errors (an empty or degenerate valid depth → :class:`InputError`).

    Returns:
        ``frames`` (V,3,H,W) float32 [−1, 1]; ``pointmap`` (V,3,H,W), ``disparity`` (V,1,H,W), ``ray`` and
        ``moment`` (V,3,H,W) float32 (module docstring); ``valid`` (V,H,W) bool; ``scale`` (s) and
        ``z_lower`` float32 scalars; ``depth`` (V,H,W) float32 (0 where invalid); ``intrinsics``
        (V,3,3) and ``world_from_cam`` (V,4,4) float32, the latter relative to frame 0 (``[0] = I``).
    """
    K = _check_clip(frames_u8, depth, intrinsics, world_from_cam)
    V, H, W = depth.shape
    valid = valid_depth(depth)
    ref_from_cam = relative_poses(world_from_cam)
    points = clip_points(depth, valid, K, ref_from_cam)
    lower, s = percentile_bounds(points[..., 2][valid], f"{name}: point map z")
    d_lower, d_s = percentile_bounds(1.0 / depth[valid].astype(np.float64), f"{name}: disparity")
    ray, moment = ray_targets(ref_from_cam, K, H, W, s)
    chw = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1))  # noqa: E731  (V,H,W,C) → (V,C,H,W)
    return {
        "frames": frames_to_unit_range(frames_u8),
        "pointmap": chw(normalise_pointmap(points, valid, lower, s)),
        "disparity": normalise_disparity(depth, valid, d_lower, d_s)[:, None],
        "ray": chw(ray), "moment": chw(moment), "valid": valid,
        "scale": np.float32(s), "z_lower": np.float32(lower),
        "depth": np.where(valid, depth, 0.0).astype(np.float32),
        "intrinsics": K.astype(np.float32), "world_from_cam": ref_from_cam.astype(np.float32),
    }


def decoded_from_targets(sample: dict[str, np.ndarray], confidence_logit: float = 0.0) -> np.ndarray:
    """What a perfect network would decode for ``sample``: (11, V, H, W) float32, channels
    ``[x, y, z, confidence logit, ray (3), moment (3), disparity]`` (the layout
    :func:`geo4d_model.postprocess.postprocess_window` reads), the logit constant ``confidence_logit``."""
    pm = np.asarray(sample["pointmap"], dtype=np.float32)
    check_shape(pm, (None, 3, None, None), "pointmap")
    V, _, H, W = pm.shape
    parts = [pm, np.full((V, 1, H, W), confidence_logit, np.float32), sample["ray"], sample["moment"],
             sample["disparity"]]
    for part, key, c in zip(parts[2:], ("ray", "moment", "disparity"), (3, 3, 1)):
        check_shape(part, (V, c, H, W), key)
    return np.ascontiguousarray(np.moveaxis(np.concatenate(parts, axis=1), 1, 0).astype(np.float32))
