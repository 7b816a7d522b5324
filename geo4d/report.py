"""Things people look at: the metrics table and a summary figure (pure; no Prefect; point clouds:
:mod:`geo4d.formats.ply`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["METRIC_COLUMNS", "SummaryInfo", "format_metrics_table", "write_summary_png", "shot_lines"]

#: (metrics key, column title, format) of the metrics table the CLI prints.
METRIC_COLUMNS = (
    ("abs_rel", "Abs Rel", "{:.4f}"),
    ("delta_1_25", "δ<1.25", "{:.3f}"),
    ("ate", "ATE", "{:.4f}"),
    ("ate_rel", "ATE/path", "{:.3%}"),
    ("rpe_trans", "RPE-T", "{:.4f}"),
    ("rpe_rot", "RPE-R°", "{:.3f}"),
    ("focal_err_pct", "focal err %", "{:.2f}"),
)


def format_metrics_table(rows: Mapping[str, Mapping[str, float] | None]) -> str:
    """A fixed-width text table, one row per name (e.g. video id), columns :data:`METRIC_COLUMNS`."""
    titles = ["video"] + [c[1] for c in METRIC_COLUMNS]
    body = []
    for name, metrics in rows.items():
        cells = [name]
        for key, _, fmt in METRIC_COLUMNS:
            v = (metrics or {}).get(key)
            cells.append("—" if v is None or not np.isfinite(v) else fmt.format(v))
        body.append(cells)
    widths = [max(len(r[i]) for r in [titles] + body) for i in range(len(titles))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(titles), line(["-" * w for w in widths])] + [line(r) for r in body])


@dataclass(frozen=True)
class SummaryInfo:
    """What the summary figure's title says about the video beside the pictures.

    Attributes:
        video_id: the video's id; n_frames: its frame count; fps: its frame rate (0: unknown).
        focal_px: (fx, fy) focal lengths in pixels (e.g. medians over the frames).
        synthetic: True when the predictions came from the synthetic test instrument (None: unknown).
        metrics: evaluation metrics (keys of :data:`METRIC_COLUMNS`), or None without ground truth.
        shots: each shot's record of quality scores (:func:`geo4d.quality.shot_scores`, with ``start``,
            ``end``, ``skipped``), or None: a line on the shots, then one of scores per shot (at most
            :data:`MAX_SHOT_LINES`).

    >>> print(SummaryInfo("clip-1", 20, 10.0, (71.4, 71.2), True, {"abs_rel": 0.0123}).title())
    clip-1 — 20 frames at 10 fps — focal fx 71.4 px, fy 71.2 px
    predictor: SYNTHETIC test instrument (predictions derived from ground truth, not the network)
    Abs Rel 0.0123
    """

    video_id: str
    n_frames: int
    fps: float
    focal_px: tuple[float, float]
    synthetic: bool | None = None
    metrics: Mapping[str, float] | None = None
    shots: Sequence[Mapping[str, Any]] | None = None

    def title(self) -> str:
        rate = f"{self.fps:g} fps" if self.fps > 0 else "unknown fps"
        lines = [f"{self.video_id} — {self.n_frames} frames at {rate} — "
                 f"focal fx {self.focal_px[0]:.1f} px, fy {self.focal_px[1]:.1f} px"]
        if self.synthetic is not None:
            lines.append("predictor: SYNTHETIC test instrument (predictions derived from ground truth, not the network)"
                         if self.synthetic else "predictor: Geo4D network")
        shown = [f"{name} {fmt.format(self.metrics[key])}" for key, name, fmt in METRIC_COLUMNS
                 if self.metrics and self.metrics.get(key) is not None and np.isfinite(self.metrics[key])]
        if shown:
            lines.append(" · ".join(shown))
        return "\n".join(lines + shot_lines(self.shots or []))


#: Shots of the report's title with a line of scores each (the others are counted).
MAX_SHOT_LINES = 4
#: (score, short name, format) of a shot's line in the report.
SHOT_SCORE_COLUMNS = (("window_agreement", "agreement", "{:.3f}"), ("worst_window_agreement", "worst", "{:.3f}"),
                      ("confident_fraction", "confident", "{:.2f}"),
                      ("flagged_windows", "flagged", "{:.2f}"), ("rotation_deg", "rotation", "{:.0f}°"),
                      ("translation_rel", "translation", "{:.2f}"), ("dynamic_fraction", "dynamic", "{:.2f}"),
                      ("sky_fraction", "sky", "{:.2f}"))


def shot_lines(shots: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's lines on a video's shots: how many (and the skipped ones with why), then the
    scores of each reconstructed shot.

    >>> shot_lines([{"shot": 0, "start": 0, "end": 20, "skipped": None, "window_agreement": 0.0012},
    ...             {"shot": 1, "start": 20, "end": 29, "skipped": "shorter than one window (9 frames < 16)"}])
    ['2 shots; skipped: frames 20–28 (shorter than one window (9 frames < 16))', 'shot 0 (frames 0–19): agreement 0.001']
    """
    if not shots:
        return []
    skipped = [s for s in shots if s.get("skipped")]
    head = f"{len(shots)} shot{'s' if len(shots) != 1 else ''}"
    if skipped:
        head += "; skipped: " + ", ".join(f"frames {s['start']}–{s['end'] - 1} ({s['skipped']})" for s in skipped)
    lines = [head]
    done = [s for s in shots if not s.get("skipped")]
    for s in done[:MAX_SHOT_LINES]:
        vals = [f"{name} {fmt.format(s[k])}" for k, name, fmt in SHOT_SCORE_COLUMNS if s.get(k) is not None]
        lines.append(f"shot {s['shot']} (frames {s['start']}–{s['end'] - 1}): " + " · ".join(vals))
    if len(done) > MAX_SHOT_LINES:
        lines.append(f"… and {len(done) - MAX_SHOT_LINES} more shots")
    return lines


def write_summary_png(
    path: str | Path | BinaryIO,
    frames: np.ndarray,
    depth: np.ndarray,
    confidence: np.ndarray,
    world_from_cam: np.ndarray,
    gt_world_from_cam: np.ndarray | None = None,
    title: str = "",
    n_show: int = 4,
    *,
    info: SummaryInfo | None = None,
    shown: Sequence[int] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """A figure with sample frames, inverse depth, confidence and the estimated (vs true) trajectory.

    The true trajectory is Sim(3)-aligned to the estimate's frame for display.

    Args:
        path: a file name or a binary file object (PNG written to it).
        frames: (S, H, W, 3) uint8; depth, confidence: (S, H, W) — all T frames (S = T; ``n_show``
            evenly spaced ones are drawn) or, with ``shown``, just the frames numbered ``shown``.
        world_from_cam: (T, 4, 4) estimated poses; gt_world_from_cam: (T, 4, 4) true ones, optional.
        title: a line under ``info``'s title (``info``: video id, frames, fps, focal, predictor, metrics).
        metadata: PNG text chunks (e.g. what the figure was drawn from).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if shown is None:
        shown = np.linspace(0, frames.shape[0] - 1, n_show).round().astype(int).tolist()
        rows = list(shown)
    else:
        rows = list(range(len(shown)))
    extra = 0.9 + 0.2 * len(shot_lines(info.shots or [])) if info else 0.0  # room for the title's lines
    fig = plt.figure(figsize=(3.2 * len(shown), 9.6 + extra))
    _draw_frames(fig, frames, depth, confidence, rows, list(shown))
    _draw_trajectory(fig, world_from_cam, gt_world_from_cam)
    heading = "\n".join(t for t in ((info.title() if info else ""), title) if t)
    if heading:
        fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80, format="png", metadata=dict(metadata or {}))
    plt.close(fig)


def _draw_frames(fig, frames: np.ndarray, depth: np.ndarray, confidence: np.ndarray, rows: list[int],
                 numbers: list[int]) -> None:
    """Rows 1–3 of the summary: the frames ``rows`` of the arrays (labelled ``numbers``), their inverse
    depth (where confident) and confidence."""
    n = len(rows)
    for k, (i, number) in enumerate(zip(rows, numbers)):
        d = np.where(confidence[i] > 0, depth[i], np.nan)
        for r, (img, name, cmap) in enumerate(((frames[i], f"frame {number}", None), (1.0 / d, "inverse depth", "inferno"),
                                               (confidence[i], "confidence", "viridis"))):
            ax = fig.add_subplot(4, n, 1 + r * n + k)
            ax.imshow(img, cmap=cmap)
            ax.set_title(name)
            ax.axis("off")


def _draw_trajectory(fig, world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray | None) -> None:
    """Row 4 of the summary: the camera path from above (x, z) and the camera height (y) per frame."""
    from geo4d.align import umeyama

    est = world_from_cam[:, :3, 3]
    gta = None
    if gt_world_from_cam is not None:
        gt = gt_world_from_cam[:, :3, 3]
        s, R, t = umeyama(gt, est)
        gta = s * gt @ R.T + t
    ax = fig.add_subplot(4, 2, 7)
    ax.plot(est[:, 0], est[:, 2], "-o", ms=2, label="estimated")
    if gta is not None:
        ax.plot(gta[:, 0], gta[:, 2], "--", label="ground truth (Sim(3)-aligned)")
    ax.set_xlabel("x")
    ax.set_ylabel("z (forward)")
    ax.set_title("camera path, top view")
    ax.axis("equal")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(4, 2, 8)
    ax.plot(est[:, 1], "-", label="estimated y")
    if gta is not None:
        ax.plot(gta[:, 1], "--", label="ground truth y")
    ax.set_xlabel("frame")
    ax.set_title("camera height (y down)")
    ax.legend(fontsize=8)
