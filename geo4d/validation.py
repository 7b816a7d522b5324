"""Data checks at stage boundaries, with Great Expectations on small per-frame summary tables.

Each check turns the stage's output into one row per frame (or per window frame) of summaries —
fraction of finite values, minima, orthonormality error, … — and validates that table against an
expectation suite. Raw tensors never go to Great Expectations (a few hundred rows per video keep a
validation at a few tens of milliseconds). A failed expectation raises :class:`ValidationError`
naming the stage, the expectation and the column.
"""

from __future__ import annotations

import numpy as np

from geo4d.errors import PredictionError
from geo4d.geometry import Geometry

__all__ = ["ValidationError", "window_summary", "validate_window_summaries", "validate_windows", "validate_fused",
           "validate_metrics"]

_CONTEXT = None


class ValidationError(PredictionError):
    """A stage's output failed a data expectation."""


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        import os

        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import logging

        import great_expectations as gx

        # its INFO note of a temporary docs directory (a logger set to INFO) would land on the console
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

        _CONTEXT = gx.get_context(mode="ephemeral")
        try:
            _CONTEXT.variables.progress_bars = {"globally": False, "metric_calculations": False}
        except Exception:  # older/newer layouts of the progress-bar setting: cosmetic only
            pass
    return _CONTEXT


def _validate(stage: str, frame, expectations: list) -> None:
    import great_expectations as gx

    ctx = _context()
    name = f"geo4d-{stage}"
    try:
        source = ctx.data_sources.get(name)
    except (KeyError, ValueError):
        source = ctx.data_sources.add_pandas(name)
    try:
        asset = source.get_asset("summary")
    except (LookupError, ValueError):
        asset = source.add_dataframe_asset("summary")
    try:
        batch_def = asset.get_batch_definition("whole")
    except (KeyError, ValueError):
        batch_def = asset.add_batch_definition_whole_dataframe("whole")
    suite = gx.ExpectationSuite(name=f"{name}-suite", expectations=expectations)
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite)
    if not result.success:
        bad = [r for r in result.results if not r.success][0]
        cfg = bad.expectation_config
        col = cfg.kwargs.get("column")
        detail = bad.result.get("partial_unexpected_list") or bad.result.get("observed_value")
        raise ValidationError(f"{stage}: expectation {cfg.type} failed on {col} (unexpected: {detail})")


def window_summary(window: dict, g: int, start: int) -> list[dict]:
    """Summary rows (one per frame) of one window's modalities ``{name: (V, …)}``."""
    conf = np.asarray(window["pointmap_conf"], dtype=np.float32)
    d = np.asarray(window["ray_dir"], dtype=np.float32)
    finite = min(float(np.isfinite(np.asarray(a, dtype=np.float32)).mean()) for a in window.values())
    valid = conf > 0
    norm_err = np.abs(np.linalg.norm(d, axis=-1) - 1.0)
    return [{"window": g, "frame": start + v, "finite_fraction": finite, "conf_min": float(conf[v].min()),
             "valid_fraction": float(valid[v].mean()),
             "ray_norm_error": float(norm_err[v][valid[v]].mean()) if valid[v].any() else 0.0}
            for v in range(conf.shape[0])]


def validate_window_summaries(rows: list[dict], min_valid_fraction: float = 0.02) -> None:
    """Windows: modalities finite, confidence ≥ 0, valid fraction in [0, 1] with a mean of at least
    ``min_valid_fraction``, unit ray directions on valid pixels."""
    import great_expectations as gx
    import pandas as pd

    _validate("windows", pd.DataFrame(rows), [
        gx.expectations.ExpectColumnValuesToBeBetween(column="finite_fraction", min_value=1.0, max_value=1.0),
        gx.expectations.ExpectColumnValuesToBeBetween(column="conf_min", min_value=0.0),
        gx.expectations.ExpectColumnValuesToBeBetween(column="valid_fraction", min_value=0.0, max_value=1.0),
        gx.expectations.ExpectColumnMeanToBeBetween(column="valid_fraction", min_value=min_valid_fraction),
        gx.expectations.ExpectColumnValuesToBeBetween(column="ray_norm_error", max_value=1e-2),
    ])


def validate_windows(arrays, starts, min_valid_fraction: float = 0.02) -> None:
    """:func:`validate_window_summaries` over stored windows ``{name: (G, V, …)}``."""
    rows = []
    for g, start in enumerate(starts):
        rows += window_summary({n: a[g] for n, a in arrays.items()}, g, start)
    validate_window_summaries(rows, min_valid_fraction)


def validate_fused(fused: Geometry, height: int, width: int) -> None:
    """Per frame: depth finite and > 0 where confident, confidence ≥ 0, rotations orthonormal with det 1,
    intrinsics positive with the principal point inside the image, a valid fraction in (0, 1]."""
    import great_expectations as gx
    import pandas as pd

    depth, conf = fused.depth, fused.confidence
    K, P = fused.intrinsics, fused.world_from_cam
    R = P[:, :3, :3].astype(np.float64)
    orth = np.abs(np.matmul(np.swapaxes(R, 1, 2), R) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(R)
    valid = conf > 0
    frame = pd.DataFrame({
        "finite": [float(np.isfinite(depth[t]).all() and np.isfinite(P[t]).all() and np.isfinite(K[t]).all())
                   for t in range(len(depth))],
        "min_confident_depth": [float(depth[t][valid[t]].min()) if valid[t].any() else 1.0 for t in range(len(depth))],
        "conf_min": conf.reshape(len(conf), -1).min(axis=1).astype(float),
        "orthonormality_error": orth, "det": det,
        "fx": K[:, 0, 0].astype(float), "fy": K[:, 1, 1].astype(float),
        "cx": K[:, 0, 2].astype(float), "cy": K[:, 1, 2].astype(float),
        "valid_fraction": valid.reshape(len(valid), -1).mean(axis=1),
    })
    _validate("fuse", frame, [
        gx.expectations.ExpectColumnValuesToBeBetween(column="finite", min_value=1.0, max_value=1.0),
        gx.expectations.ExpectColumnValuesToBeBetween(column="min_confident_depth", min_value=0.0, strict_min=True),
        gx.expectations.ExpectColumnValuesToBeBetween(column="conf_min", min_value=0.0),
        gx.expectations.ExpectColumnValuesToBeBetween(column="orthonormality_error", max_value=1e-3),
        gx.expectations.ExpectColumnValuesToBeBetween(column="det", min_value=0.999, max_value=1.001),
        gx.expectations.ExpectColumnValuesToBeBetween(column="fx", min_value=0.0, strict_min=True),
        gx.expectations.ExpectColumnValuesToBeBetween(column="fy", min_value=0.0, strict_min=True),
        gx.expectations.ExpectColumnValuesToBeBetween(column="cx", min_value=0.0, max_value=float(width)),
        gx.expectations.ExpectColumnValuesToBeBetween(column="cy", min_value=0.0, max_value=float(height)),
        gx.expectations.ExpectColumnValuesToBeBetween(column="valid_fraction", min_value=0.0, max_value=1.0),
    ])


def validate_metrics(metrics: dict) -> None:
    """The metrics row: finite, Abs Rel ≥ 0, 0 ≤ δ<1.25 ≤ 1, ATE ≥ 0."""
    import great_expectations as gx
    import pandas as pd

    keys = [k for k in ("abs_rel", "delta_1_25", "ate", "rpe_trans", "rpe_rot") if k in metrics]
    frame = pd.DataFrame([{k: float(metrics[k]) for k in keys}])
    exps = [gx.expectations.ExpectColumnValuesToNotBeNull(column=k) for k in keys]
    exps += [gx.expectations.ExpectColumnValuesToBeBetween(column=k, min_value=0.0) for k in keys if k != "delta_1_25"]
    if "delta_1_25" in keys:
        exps.append(gx.expectations.ExpectColumnValuesToBeBetween(column="delta_1_25", min_value=0.0, max_value=1.0))
    frame = frame.replace([np.inf, -np.inf], np.nan)
    _validate("evaluate", frame, exps)
