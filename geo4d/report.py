"""Things people look at: the metrics table, a summary figure and a PLY point cloud (pure; no Prefect)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from geo4d.cameras import check_shape

__all__ = ["METRIC_COLUMNS", "format_metrics_table", "write_ply", "write_summary_png"]

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


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None) -> int:
    """Write a binary little-endian PLY point cloud; returns the number of points written.

    Written by hand (a dozen lines): the format is trivial and no maintained dependency is needed.

    Args:
        points: (N, 3) positions; non-finite rows are dropped.
        colors: (N, 3) uint8 RGB, optional.
    """
    check_shape(points, (None, 3), "points")
    keep = np.isfinite(points).all(axis=1)
    pts = np.asarray(points[keep], dtype="<f4")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        check_shape(colors, (points.shape[0], 3), "colors")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    rec = np.empty(len(pts), dtype=fields)
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if colors is not None:
        col = np.asarray(colors[keep], dtype=np.uint8)
        rec["red"], rec["green"], rec["blue"] = col[:, 0], col[:, 1], col[:, 2]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(rec)}"]
    header += [f"property {'float' if t == '<f4' else 'uchar'} {n}" for n, t in fields]
    header += ["end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rec.tobytes())
    return len(rec)


def write_summary_png(
    path: str | Path,
    frames: np.ndarray,
    depth: np.ndarray,
    confidence: np.ndarray,
    world_from_cam: np.ndarray,
    gt_world_from_cam: np.ndarray | None = None,
    title: str = "",
    n_show: int = 4,
) -> None:
    """A figure with sample frames, depth, confidence and the estimated (vs true) trajectory.

    The true trajectory is Sim(3)-aligned to the estimate's frame for display.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geo4d.align import umeyama

    T = frames.shape[0]
    idx: Sequence[int] = np.linspace(0, T - 1, n_show).round().astype(int).tolist()
    fig = plt.figure(figsize=(3.2 * n_show, 9.6))
    for k, i in enumerate(idx):
        ax = fig.add_subplot(4, n_show, 1 + k)
        ax.imshow(frames[i])
        ax.set_title(f"frame {i}")
        ax.axis("off")
        ax = fig.add_subplot(4, n_show, 1 + n_show + k)
        d = np.where(confidence[i] > 0, depth[i], np.nan)
        ax.imshow(1.0 / d, cmap="inferno")
        ax.set_title("inverse depth")
        ax.axis("off")
        ax = fig.add_subplot(4, n_show, 1 + 2 * n_show + k)
        ax.imshow(confidence[i], cmap="viridis")
        ax.set_title("confidence")
        ax.axis("off")
    ax = fig.add_subplot(4, 2, 7)
    est = world_from_cam[:, :3, 3]
    ax.plot(est[:, 0], est[:, 2], "-o", ms=2, label="estimated")
    if gt_world_from_cam is not None:
        gt = gt_world_from_cam[:, :3, 3]
        s, R, t = umeyama(gt, est)
        gta = s * gt @ R.T + t
        ax.plot(gta[:, 0], gta[:, 2], "--", label="ground truth (Sim(3)-aligned)")
    ax.set_xlabel("x")
    ax.set_ylabel("z (forward)")
    ax.set_title("camera path, top view")
    ax.axis("equal")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(4, 2, 8)
    ax.plot(est[:, 1], "-", label="estimated y")
    if gt_world_from_cam is not None:
        ax.plot(gta[:, 1], "--", label="ground truth y")
    ax.set_xlabel("frame")
    ax.set_title("camera height (y down)")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
