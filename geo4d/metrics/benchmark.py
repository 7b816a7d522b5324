"""Benchmark protocol glue (pure): per-sequence metrics of a reconstruction, dataset means, and
the paper-style Markdown tables (our numbers next to the published ones).

* :func:`sequence_metrics` — one sequence: predicted depth brought to the ground-truth resolution
  (bicubic), the protocol's depth metrics (per-sequence scale+shift, caps), and Sim(3)-aligned
  ATE / RPE where the protocol evaluates poses.
* :func:`dataset_means` — the protocol's aggregation: depth metrics pixel-weighted by
  ``valid_pixels``; pose metrics the plain mean over sequences with a pose result.
* :data:`PAPER_DEPTH`, :data:`PAPER_POSE` — the Geo4D paper's tables (ICCV 2025);
  :func:`render_benchmarks_markdown` puts result rows next to them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from geo4d.metrics.depth import DEPTH_PROTOCOLS, DepthProtocol, depth_metrics_protocol
from geo4d.metrics.pose import pose_metrics
from geo4d.metrics.reconstruction import focal_error_pct

__all__ = [
    "POSE_PROTOCOL",
    "DEPTH_MEAN_KEYS",
    "POSE_MEAN_KEYS",
    "sequence_metrics",
    "dataset_means",
    "PAPER_DEPTH",
    "PAPER_POSE",
    "render_results_markdown",
    "render_benchmarks_markdown",
    "render_benchmarks_page",
]

#: The pose protocol (all benchmarks): evo's ATE and RPE (Δ = 1 frame) after Sim(3) Umeyama.
POSE_PROTOCOL = {"name": "evo-ate-rpe", "align": "sim3", "rpe_delta_frames": 1, "rpe_rot_unit": "deg",
                 "statistic": "rmse"}
DEPTH_MEAN_KEYS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1_25", "delta_1_25_2", "delta_1_25_3")
POSE_MEAN_KEYS = ("ate", "rpe_trans", "rpe_rot", "ate_rel")


def sequence_metrics(
    dataset: str,
    depth: np.ndarray | None,
    confidence: np.ndarray | None,
    world_from_cam: np.ndarray | None,
    intrinsics: np.ndarray | None,
    *,
    gt_depth: np.ndarray | None = None,
    gt_world_from_cam: np.ndarray | None = None,
    gt_intrinsics: np.ndarray | None = None,
    depth_protocol: DepthProtocol | None = None,
    evaluate_depth: bool = True,
    evaluate_poses: bool = True,
) -> dict[str, Any]:
    """Metrics of one reconstructed sequence under ``dataset``'s protocol.

    Args:
        depth: (T, h, w) predicted depth at the inference resolution (0 where invalid).
        confidence: (T, h, w) its validity/confidence (> 0 valid): resized like the depth and
            thresholded at 0.8 to make the alignment mask (the protocol's point-valid mask).
        world_from_cam: (T, 4, 4) predicted poses; intrinsics (T, 3, 3) at (h, w).
        gt_depth: (T, H, W) ground truth (0 / non-finite where missing).
        gt_world_from_cam: (T, 4, 4); gt_intrinsics: (T, 3, 3) at (H, W) (focal error only).
        depth_protocol: default ``DEPTH_PROTOCOLS[dataset]``.

    Returns:
        ``depth_evaluated``, ``pose_evaluated`` and the metrics that apply (depth keys of
        :func:`geo4d.metrics.depth_metrics` with ``depth_scale``/``depth_shift``; ``ate``,
        ``rpe_trans``, ``rpe_rot``, ``ate_rel``; ``focal_err_pct`` when both intrinsics exist).
    """
    from geo4d.datasets.formats import resize_depth_to, resize_mask_to

    out: dict[str, Any] = {"depth_evaluated": False, "pose_evaluated": False}
    if evaluate_depth and gt_depth is not None and depth is not None:
        proto = depth_protocol or DEPTH_PROTOCOLS[dataset]
        H, W = gt_depth.shape[1:]
        pred = resize_depth_to(np.where(np.isfinite(depth), depth, 0.0), (H, W))
        mask = None
        if proto.use_align_mask and confidence is not None:
            mask = resize_mask_to(np.asarray(confidence) > 0, (H, W))
        m = depth_metrics_protocol(pred, gt_depth, proto, align_mask=mask)
        out.update({k: m[k] for k in ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1_25", "delta_1_25_2",
                                      "delta_1_25_3", "valid_pixels")})
        out["depth_scale"], out["depth_shift"] = m["scale"], m["shift"]
        out["depth_evaluated"] = True
        if intrinsics is not None and gt_intrinsics is not None:
            K = np.array(intrinsics, dtype=np.float64)
            h, w = np.shape(depth)[1:]
            K[..., 0, :] *= W / w
            K[..., 1, :] *= H / h
            out["focal_err_pct"] = focal_error_pct(K, gt_intrinsics)
    if evaluate_poses and gt_world_from_cam is not None and world_from_cam is not None:
        p = pose_metrics(world_from_cam, gt_world_from_cam, align=POSE_PROTOCOL["align"])
        out.update({k: p[k] for k in POSE_MEAN_KEYS})
        out["pose_evaluated"] = True
    return out


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


def dataset_means(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The protocol's dataset-level numbers from per-sequence rows.

    Depth: ``np.average(metric, weights=valid_pixels)`` over sequences with depth metrics.
    Poses: plain mean over sequences with a finite, non-zero ATE (failed sequences are dropped,
    as the reference evaluation drops its zero placeholders).
    """
    rows = list(rows)
    out: dict[str, Any] = {"n_frames": sum(int(r.get("n_frames") or 0) for r in rows)}
    dep = [r for r in rows if r.get("depth_evaluated") and _finite(r.get("abs_rel")) and (r.get("valid_pixels") or 0) > 0]
    out["depth_evaluated"] = bool(dep)
    if dep:
        w = np.array([float(r["valid_pixels"]) for r in dep])
        for k in DEPTH_MEAN_KEYS:
            out[k] = float(np.average([float(r[k]) for r in dep], weights=w))
        out["valid_pixels"] = int(w.sum())
    pos = [r for r in rows if r.get("pose_evaluated") and _finite(r.get("ate")) and r["ate"] != 0]
    out["pose_evaluated"] = bool(pos)
    if pos:
        for k in POSE_MEAN_KEYS:
            vals = [float(r[k]) for r in pos if _finite(r.get(k))]
            out[k] = float(np.mean(vals)) if vals else None
    foc = [float(r["focal_err_pct"]) for r in rows if _finite(r.get("focal_err_pct"))]
    if foc:
        out["focal_err_pct"] = float(np.mean(foc))
    return out


# ---- paper tables ---------------------------------------------------------------------------------------
#: Video depth, Geo4D paper (Abs Rel, δ<1.25 in %), by method and dataset.
PAPER_DEPTH: dict[str, dict[str, tuple[float, float]]] = {
    "Depth-Anything-V2": {"sintel": (0.367, 55.4), "bonn": (0.106, 92.1), "kitti": (0.140, 80.4)},
    "DepthCrafter": {"sintel": (0.270, 69.7), "bonn": (0.071, 97.2), "kitti": (0.104, 89.6)},
    "MonST3R": {"sintel": (0.335, 58.5), "bonn": (0.063, 96.4), "kitti": (0.104, 89.5)},
    "Geo4D": {"sintel": (0.205, 73.5), "bonn": (0.059, 97.2), "kitti": (0.086, 93.7)},
}
#: Camera poses, Geo4D paper (ATE, RPE-R in degrees), by method and dataset.
PAPER_POSE: dict[str, dict[str, tuple[float, float]]] = {
    "MonST3R": {"sintel": (0.108, 0.732), "tum": (0.063, 1.217)},
    "Geo4D": {"sintel": (0.185, 0.547), "tum": (0.073, 0.635)},
}
DEPTH_DATASETS = ("sintel", "bonn", "kitti")
POSE_DATASETS = ("sintel", "tum")
_TITLES = {"sintel": "Sintel", "bonn": "Bonn", "kitti": "KITTI", "tum": "TUM-dynamics"}


def _fmt(v: Any, spec: str) -> str:
    return format(float(v), spec) if _finite(v) else "—"


def render_benchmarks_markdown(ours: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The paper's depth and pose tables with our rows added.

    Args:
        ours: ``{method label: {dataset: mean row}}`` (mean rows as :func:`dataset_means` makes them,
            δ as a fraction); labels are shown in bold, marked "(this pipeline)".
    """
    lines = ["### Video depth (Abs Rel ↓, δ<1.25 % ↑)", ""]
    head = "| method | " + " | ".join(f"{_TITLES[d]} Abs Rel | {_TITLES[d]} δ<1.25" for d in DEPTH_DATASETS) + " |"
    lines += [head, "|" + "---|" * (1 + 2 * len(DEPTH_DATASETS))]
    for m, vals in PAPER_DEPTH.items():
        cells = []
        for d in DEPTH_DATASETS:
            a, b = vals.get(d, (None, None))
            cells += [_fmt(a, ".3f"), _fmt(b, ".1f")]
        lines.append(f"| {m} (paper) | " + " | ".join(cells) + " |")
    for label, per in ours.items():
        cells = []
        for d in DEPTH_DATASETS:
            r = per.get(d) or {}
            ok = r.get("depth_evaluated")
            cells += [_fmt(r.get("abs_rel") if ok else None, ".3f"),
                      _fmt(100 * r["delta_1_25"] if ok and _finite(r.get("delta_1_25")) else None, ".1f")]
        lines.append(f"| **{label}** (this pipeline) | " + " | ".join(cells) + " |")
    lines += ["", "### Camera poses (ATE ↓, RPE-T ↓, RPE-R ° ↓)", ""]
    head = "| method | " + " | ".join(f"{_TITLES[d]} ATE | {_TITLES[d]} RPE-T | {_TITLES[d]} RPE-R" for d in POSE_DATASETS) + " |"
    lines += [head, "|" + "---|" * (1 + 3 * len(POSE_DATASETS))]
    for m, vals in PAPER_POSE.items():
        cells = []
        for d in POSE_DATASETS:
            a, b = vals.get(d, (None, None))
            cells += [_fmt(a, ".3f"), "—", _fmt(b, ".3f")]
        lines.append(f"| {m} (paper) | " + " | ".join(cells) + " |")
    for label, per in ours.items():
        cells = []
        for d in POSE_DATASETS:
            r = per.get(d) or {}
            ok = r.get("pose_evaluated")
            cells += [_fmt(r.get("ate") if ok else None, ".3f"), _fmt(r.get("rpe_trans") if ok else None, ".3f"),
                      _fmt(r.get("rpe_rot") if ok else None, ".3f")]
        lines.append(f"| **{label}** (this pipeline) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_results_markdown(rows: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]) -> str:
    """A run's summary: per-sequence table, the mean, and the paper tables with this run's row."""
    ds = str(metadata.get("dataset", ""))
    method = str(metadata.get("method", "ours"))
    lines = [f"# {_TITLES.get(ds, ds)} — {method}", ""]
    proto = metadata.get("protocol", {})
    if proto:
        lines += [f"Protocol: depth `{(proto.get('depth') or {}).get('name', '—')}` "
                  f"(align `{(proto.get('depth') or {}).get('align', '—')}`), poses `{(proto.get('pose') or {}).get('name', '—')}`.", ""]
    if metadata.get("synthetic"):
        lines += ["**Synthetic predictor — a test instrument: predictions derived from ground truth; "
                  "these numbers measure the fusion and evaluation, not a network.**", ""]
    lines += ["| sequence | frames | Abs Rel | δ<1.25 % | ATE | RPE-T | RPE-R ° | error |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d_ok, p_ok = r.get("depth_evaluated"), r.get("pose_evaluated")
        lines.append("| " + " | ".join([
            ("**mean**" if r.get("row") == "mean" else str(r.get("sequence"))),
            str(r.get("n_frames") or "—"),
            _fmt(r.get("abs_rel") if d_ok else None, ".4f"),
            _fmt(100 * r["delta_1_25"] if d_ok and _finite(r.get("delta_1_25")) else None, ".1f"),
            _fmt(r.get("ate") if p_ok else None, ".4f"),
            _fmt(r.get("rpe_trans") if p_ok else None, ".4f"),
            _fmt(r.get("rpe_rot") if p_ok else None, ".3f"),
            (str(r.get("error")).replace("|", "/")[:80] if r.get("error") else ""),
        ]) + " |")
    mean = next((r for r in rows if r.get("row") == "mean"), None)
    lines += ["", "## Next to the paper", ""]
    lines.append(render_benchmarks_markdown({method: {ds: mean or {}}}))
    return "\n".join(lines)


def render_benchmarks_page(ours: Mapping[str, Mapping[str, Mapping[str, Any]]],
                           sources: Sequence[str] = ()) -> str:
    """The whole ``docs/benchmarks.md`` page: how to reproduce, the paper tables with our rows."""
    lines = [
        "# Benchmarks: the Geo4D paper's numbers next to ours",
        "",
        "Generated by `geo4d metrics report RESULTS… --out docs/benchmarks.md` from the Parquet tables",
        "that `geo4d evaluate --dataset sintel|bonn|kitti|tum --root DIR --store STORE` writes (one per",
        "run, default `STORE.results/`). Rerun that command after a benchmark run to refresh this page.",
        "Protocols and their exact settings: [evaluation.md](evaluation.md). Paper rows are copied from",
        "the Geo4D paper (ICCV 2025); rows in bold come from result tables of this pipeline.",
        "δ<1.25 is in percent, RPE-R in degrees; — marks a number not available.",
        "",
    ]
    if any("synthetic" in str(label).lower() for label in ours):
        lines += ["Rows labelled *synthetic predictor* used the test instrument (predictions derived from",
                  "the benchmark's own ground truth): they check the pipeline and the protocol, not a network.", ""]
    if not ours:
        lines += ["*No result of this pipeline yet: run `geo4d evaluate` and then the command above.*", ""]
    lines.append(render_benchmarks_markdown(ours))
    if sources:
        lines += ["", "Result tables used:", ""] + [f"- `{s}`" for s in sources]
    return "\n".join(lines).rstrip() + "\n"
