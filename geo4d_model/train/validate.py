"""Validation of a model under training by the whole inference path: held-back synthetic videos are
sampled window by window with the network (:class:`geo4d_model.predictor.Geo4DPredictor`), fused
(:func:`geo4d.fusion.fuse`, estimating the point maps' z offset as for any network output) and compared with their exact ground truth
(:func:`geo4d.metrics.reconstruction_metrics`). The denoising losses say whether the network fits its
targets; this says whether the geometry a user gets is better.

The videos are procedural synthetic scenes (:mod:`geo4d.synthetic`) with seeds disjoint from the
training scenes, rendered directly at the validation size.

Example:
    >>> validate = PipelineValidation(seeds=(1_000_000,), n_frames=20, size=(32, 48))   # doctest: +SKIP
    >>> validate(models, context, step)                                                # doctest: +SKIP
    {'pipeline_abs_rel': 0.41, 'pipeline_ate': 0.12, ...}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from geo4d.errors import Geo4DError
from geo4d.fusion import FusionConfig, fuse
from geo4d.metrics import reconstruction_metrics
from geo4d.predictor import stacked_windows
from geo4d.synthetic import make_scene, render
from geo4d.windows import WINDOW_SIZE, window_starts

__all__ = ["PipelineValidation", "video_metrics", "VALIDATION_KEYS"]

#: The metrics averaged over the validation videos (``pipeline_`` prefixed in the logs).
VALIDATION_KEYS = ("abs_rel", "delta_1_25", "ate", "ate_rel", "rpe_trans", "rpe_rot")


def video_metrics(network, pointmap_vae, context: torch.Tensor, frames: np.ndarray, gt, *, size: tuple[int, int],
                  fs: int = 24, seed: int = 0, sampler_seed: int = 123) -> dict[str, float]:
    """Sample → fuse → metrics of one video.

    Args:
        network, pointmap_vae: the modules (any device; evaluated in eval mode, no gradients).
        context: (1, L, C) the constant cross-attention context.
        frames: (T, H, W, 3) uint8 at ``size``; gt: its :class:`geo4d.geometry.Geometry`.
        size: (H, W) the network runs at.

    Returns:
        ``abs_rel``, ``delta_1_25`` (scale-and-shift aligned depth), ``ate`` (Sim(3)-aligned, scene
        units), ``ate_rel`` (relative to the ground-truth path, :func:`geo4d.metrics.pose_metrics`), ``rpe_trans``, ``rpe_rot`` (degrees); NaN
        for every metric when the fusion cannot run on the predictions (an untrained network's
        windows may not give a camera), with ``failed`` = 1.
    """
    from geo4d_model.predictor import Geo4DPredictor

    T = frames.shape[0]
    predictor = Geo4DPredictor(network, pointmap_vae, context, image_size=size, fs=fs, seed=sampler_seed + seed,
                               overlap=False)
    starts = window_starts(T)
    try:
        with torch.no_grad():
            windows = stacked_windows(predictor, frames, starts, WINDOW_SIZE)
        res = fuse(windows, starts, T, config=FusionConfig(pointmap_z_offset=predictor.pointmap_z_offset))
        m = reconstruction_metrics(res.geometry.depth, res.geometry.intrinsics, res.geometry.world_from_cam,
                                   gt.depth, gt.intrinsics, gt.world_from_cam)
    except (Geo4DError, np.linalg.LinAlgError, ValueError) as exc:
        return {k: math.nan for k in VALIDATION_KEYS} | {"failed": 1.0, "error": str(exc).splitlines()[0][:200]}
    return {k: float(m[k]) for k in VALIDATION_KEYS} | {"failed": 0.0}


@dataclass(frozen=True)
class PipelineValidation:
    """A validator for :meth:`geo4d_model.train.trainer.Trainer.run`: the full inference pipeline on
    ``len(seeds)`` held-back synthetic videos of ``n_frames`` frames at ``size`` (H, W).

    Calling it returns the means over the videos, prefixed ``pipeline_`` (NaN-aware: failed videos
    are counted in ``pipeline_failed`` and left out of the means).
    """

    seeds: Sequence[int] = (1_000_000, 1_000_001)
    n_frames: int = 20
    size: tuple[int, int] = (32, 48)
    fs: int = 24

    def videos(self):
        """The held-back videos, rendered once per call (cheap at validation sizes)."""
        H, W = self.size
        for seed in self.seeds:
            yield seed, render(make_scene(int(seed), n_frames=self.n_frames, height=H, width=W))

    def __call__(self, models, context: torch.Tensor, step: int) -> dict[str, float]:
        rows = [video_metrics(models.network, models.pointmap_vae, context, video.frames, video.geometry,
                              size=self.size, fs=self.fs, seed=int(seed))
                for seed, video in self.videos()]
        out = {f"pipeline_{k}": _nanmean([r.get(k, math.nan) for r in rows]) for k in VALIDATION_KEYS}
        out["pipeline_failed"] = float(sum(r["failed"] for r in rows))
        out["pipeline_videos"] = float(len(rows))
        return out


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
