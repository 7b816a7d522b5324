"""Per-window post-processing of the decoded Geo4D modalities, as the released inference does it.

The decoded window has 11 channels per frame: ``[x, y, z, confidence logit, ray (3), moment (3),
disparity]`` (normalised spaces). For each window:

* confidence ``σ = softplus(logit)`` (β = 1, linear above 20); sky = all three point channels strictly
  inside ``1.05 ± sky_eps`` (0.35 in the demo script, 0.1 in the evaluation script); far = any
  ``|channel| > 1.99``; invalid = sky ∪ far, evaluated on the *normalised* point map;
* fusion weight ``1/σ`` with ``σ := 999`` and weight 0 on invalid pixels;
* point map de-normalised ``(x/2, y/2, (z + 1)/2)`` (first-camera frame, up to scale and a z offset);
* disparity ``(d + 1)/2``;
* the window's cameras from the ray and moment maps (:func:`geo4d.plucker.cameras_from_plucker_official`).

:func:`to_window_prediction` converts the result into the store's conventions
(:class:`geo4d.predictor.WindowPrediction`).
"""

from __future__ import annotations

import numpy as np

from geo4d.cameras import check_shape
from geo4d.plucker import cameras_from_plucker_official
from geo4d.predictor import WindowPrediction

__all__ = ["postprocess_window", "to_window_prediction", "SKY_EPS_DEMO", "SKY_EPS_EVAL"]

SKY_EPS_DEMO = 0.35
SKY_EPS_EVAL = 0.1
_SKY_VALUE = 1.05
_FAR = 1.99
_INVALID_CONF = 999.0


def _as_numpy(decoded) -> np.ndarray:
    if hasattr(decoded, "detach"):
        decoded = decoded.detach().float().cpu().numpy()
    arr = np.asarray(decoded, dtype=np.float32)
    if arr.ndim == 6:  # (b, n_samples, 11, V, H, W) as the official sampler returns it
        arr = arr[0, 0]
    if arr.ndim == 5:
        arr = arr[0]
    check_shape(arr, (11, None, None, None), "decoded")
    return arr


def postprocess_window(decoded, sky_eps: float = SKY_EPS_DEMO) -> dict[str, np.ndarray]:
    """Official post-processing of one decoded window.

    Args:
        decoded: (11, V, H, W), (1, 11, V, H, W) or (1, 1, 11, V, H, W), torch or NumPy.
        sky_eps: half-width of the sky band around 1.05.

    Returns:
        dict with ``pts3d`` (V,H,W,3), ``conf`` (V,H,W) the fusion weight 1/σ (0 invalid),
        ``inverse_depth`` (V,H,W), ``traj`` (V,4,4) camera-to-first-camera, ``valid`` (V,H,W) bool,
        ``sky`` (V,H,W) bool, ``ray_dir`` (V,H,W,3) unit, ``ray_moment`` (V,H,W,3).

    Example:
        >>> x = np.zeros((11, 1, 2, 2), np.float32); x[0:3] = 1.05; x[4:7, :, :, :] = [[[[0.0]]], [[[0.0]]], [[[1.0]]]]
        >>> out = postprocess_window(x)
        >>> out["valid"].any(), float(out["conf"].max())
        (np.False_, 0.0)
    """
    s = _as_numpy(decoded)
    pm = np.moveaxis(s[0:3], 0, -1)  # (V,H,W,3) normalised
    logit = s[3].astype(np.float64)
    sigma = np.where(logit > 20.0, logit, np.log1p(np.exp(np.minimum(logit, 20.0))))
    sky = np.all((pm > _SKY_VALUE - sky_eps) & (pm < _SKY_VALUE + sky_eps), axis=-1)
    far = np.any(np.abs(pm) > _FAR, axis=-1)
    invalid = sky | far
    sigma = np.where(invalid, _INVALID_CONF, sigma)
    weight = np.where(invalid, 0.0, 1.0 / sigma).astype(np.float32)
    pts = np.stack([pm[..., 0] / 2, pm[..., 1] / 2, (pm[..., 2] + 1) / 2], axis=-1).astype(np.float32)
    disparity = ((s[10] + 1.0) / 2.0).astype(np.float32)
    ray = np.moveaxis(s[4:7], 0, -1).astype(np.float64)
    moment = np.moveaxis(s[7:10], 0, -1).astype(np.float32)
    traj = cameras_from_plucker_official(ray, moment)
    ray_unit = (ray / np.maximum(np.linalg.norm(ray, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
    return {"pts3d": pts, "conf": weight, "inverse_depth": disparity, "traj": traj, "valid": ~invalid,
            "sky": sky, "ray_dir": ray_unit, "ray_moment": moment}


def to_window_prediction(post: dict[str, np.ndarray]) -> WindowPrediction:
    """Store conventions: weight as ``pointmap_conf`` (0 = invalid), disparity 0 on sky pixels."""
    disparity = np.where(post["sky"], 0.0, post["inverse_depth"]).astype(np.float32)
    return WindowPrediction(pointmap=post["pts3d"], pointmap_conf=post["conf"], ray_dir=post["ray_dir"],
                            ray_moment=post["ray_moment"], disparity=disparity)


def register_fixture_stages(register_stage) -> None:
    """``geo4d check-fixture`` stages: ``post.samples`` → ``post.*`` and ``ddim.decoded`` → ``post_ddim.*``
    (official names and shapes: point map (V,H,W,3), conf/inverse_depth/valid (V,H,W,1), traj (V,4,4))."""
    import torch

    def _named(prefix: str, out: dict) -> dict:
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        return {f"{prefix}.pts3d": t(out["pts3d"]), f"{prefix}.conf": t(out["conf"])[..., None],
                f"{prefix}.inverse_depth": t(out["inverse_depth"])[..., None], f"{prefix}.traj": t(out["traj"]),
                f"{prefix}.valid": t(out["valid"])[..., None]}

    @register_stage("post", ["post.samples"], doc="per-window post-processing (demo sky band 0.35)")
    def _post(ctx, cases):
        return _named("post", postprocess_window(cases["post.samples"], sky_eps=SKY_EPS_DEMO))

    @register_stage("post_ddim", ["ddim.decoded"], doc="post-processing of the sampled window")
    def _post_ddim(ctx, cases):
        return _named("post_ddim", postprocess_window(cases["ddim.decoded"], sky_eps=SKY_EPS_DEMO))
