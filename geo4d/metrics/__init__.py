"""Evaluation metrics (pure NumPy; no Prefect, no file formats beyond TUM trajectories).

* :func:`depth_metrics` — Abs Rel, δ<1.25, … after the benchmarks' per-sequence alignment.
* :func:`pose_metrics` — ATE / RPE as evo computes them (Sim(3)/SE(3) Umeyama alignment).
* :func:`reconstruction_metrics` — both, plus focal-length error, for one reconstructed video.
* :mod:`geo4d.metrics.trajectory` — TUM trajectory files, timestamp association (evo's rule).

See docs/evaluation.md for definitions and the agreement with the reference tools.
"""

from geo4d.metrics.depth import (
    DEPTH_ALIGN_METHODS,
    DEPTH_METRIC_KEYS,
    DEPTH_PROTOCOLS,
    DepthProtocol,
    depth_metrics,
    depth_metrics_protocol,
    fit_scale_l1,
    fit_scale_shift_l1,
    fit_scale_shift_l1_adam,
)
from geo4d.metrics.pose import POSE_ALIGN_METHODS, POSE_METRIC_KEYS, align_trajectory, pose_metrics
from geo4d.metrics.reconstruction import RECONSTRUCTION_METRIC_KEYS, focal_error_pct, reconstruction_metrics

__all__ = [
    "DEPTH_ALIGN_METHODS", "DEPTH_METRIC_KEYS", "DEPTH_PROTOCOLS", "DepthProtocol", "depth_metrics",
    "depth_metrics_protocol", "fit_scale_l1", "fit_scale_shift_l1", "fit_scale_shift_l1_adam",
    "POSE_ALIGN_METHODS", "POSE_METRIC_KEYS", "align_trajectory", "pose_metrics",
    "RECONSTRUCTION_METRIC_KEYS", "focal_error_pct", "reconstruction_metrics",
]
