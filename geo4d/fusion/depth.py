"""Disparity alignment and the per-pixel depth fusion.

* :func:`fit_disparity` — per window, ``disparity ≈ a / depth + b`` against the fused depth at the
  sampled pixels by iteratively re-weighted least squares (Huber), with a δ<1.25 quality score.
* :class:`DepthAccumulator` — collects, frame by frame, the candidate log depths of every window
  that sees the frame (point map and disparity) and fuses them into one depth map with a robust
  (Cauchy re-weighted) weighted mean in log depth; a frame is finished and its buffers released as
  soon as the last window that sees it has been added, so memory stays bounded by one window span.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from geo4d.fusion.robust import robust_sigma

__all__ = ["fit_disparity", "DepthAccumulator"]


def fit_disparity(disp: np.ndarray, inv_depth: np.ndarray, w: np.ndarray, iterations: int = 8) -> dict:
    """Robust affine fit ``disp ≈ a · inv_depth + b``.

    Args:
        disp: (n,) predicted disparities.
        inv_depth: (n,) inverse of the fused depth at the same pixels.
        w: (n,) weights (0 = unused).

    Returns:
        dict with ``a``, ``b``, ``n`` (pixels used), ``delta_1_25`` (share of pixels whose depth from
        the fitted disparity is within a factor 1.25 of the fused depth) and ``log_sigma`` (robust
        spread of the log-depth difference).

    Example:
        >>> x = np.linspace(0.1, 1.0, 50)
        >>> r = fit_disparity(3 * x - 0.2, x, np.ones(50))
        >>> round(r["a"], 6), round(r["b"], 6), r["delta_1_25"]
        (3.0, -0.2, 1.0)
    """
    ok = (w > 0) & np.isfinite(disp) & np.isfinite(inv_depth) & (inv_depth > 0)
    out = {"a": float("nan"), "b": float("nan"), "n": int(ok.sum()), "delta_1_25": 0.0, "log_sigma": float("inf")}
    if ok.sum() < 10:
        return out
    x, y, w0 = inv_depth[ok], disp[ok], w[ok]
    ww = w0.copy()
    a = b = 0.0
    for _ in range(iterations):
        A = np.stack([x, np.ones_like(x)], -1)
        AtA = (A * ww[:, None]).T @ A
        try:
            a, b = np.linalg.solve(AtA, (A * ww[:, None]).T @ y)
        except np.linalg.LinAlgError:
            return out
        r = y - a * x - b
        s = robust_sigma(r) + 1e-12 * (np.abs(y).max() + 1e-300)
        k = 1.5 * s
        ww = w0 * np.where(np.abs(r) <= k, 1.0, k / np.maximum(np.abs(r), 1e-300))
    inv = (y - b) / a if a != 0 else np.full_like(y, np.nan)
    good = inv > 0
    ratio = np.where(good, x / np.where(good, inv, 1.0), np.inf)  # depth_disp / depth_fused
    within = good & (np.maximum(ratio, 1.0 / np.maximum(ratio, 1e-300)) < 1.25)
    out.update(a=float(a), b=float(b), delta_1_25=float((w0 * within).sum() / w0.sum()))
    if good.any():
        ld = np.log(ratio[good])
        out["log_sigma"] = robust_sigma(ld)
    return out


class DepthAccumulator:
    """Streams window candidates into fused per-frame depth maps.

    Args:
        n_frames, height, width: output size.
        cover_count: (T,) number of windows that will be added for each frame.
        finish: called as ``finish(i, depth (H,W), confidence (H,W))`` when frame ``i`` is complete.
        robust_scale: Cauchy scale (log depth) of the per-pixel re-weighting.
        spread: log-depth spread at which the output confidence halves.
    """

    def __init__(self, n_frames: int, height: int, width: int, cover_count: np.ndarray,
                 finish: Callable[[int, np.ndarray, np.ndarray], None], robust_scale: float, spread: float):
        self.T, self.H, self.W = n_frames, height, width
        self.remaining = np.asarray(cover_count, dtype=int).copy()
        self.finish = finish
        self.robust_scale = robust_scale
        self.spread = spread
        self.buf: dict[int, list] = {}

    def add(self, i: int, candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Add one window's candidates for frame ``i``: ``[(log_depth, weight, confidence), …]``
        (each (H,W); weight 0 = no candidate; ``confidence`` is the input confidence shown in the
        output, ``None`` for candidates that only refine depth). Finishes the frame when complete."""
        self.buf.setdefault(i, []).extend(candidates)
        self.remaining[i] -= 1
        if self.remaining[i] == 0:
            self._finish(i)

    def _finish(self, i: int) -> None:
        """Fuse frame ``i``'s candidates: robust weighted mean (3 Cauchy rounds when several
        windows see it) of the log depths.

        Confidence = weighted mean input confidence ÷ (1 + (spread / ``self.spread``)²), ``spread`` the
        weighted standard deviation of the candidates around the estimate; depth and confidence 0 where
        no candidate has weight.
        """
        cands = self.buf.pop(i, [])
        H, W = self.H, self.W
        if not cands:
            self.finish(i, np.zeros((H, W)), np.zeros((H, W)))
            return
        L = np.stack([c[0] for c in cands])  # (K,H,W)
        w0 = np.stack([c[1] for c in cands])
        L = np.where(w0 > 0, L, 0.0)
        wsum = w0.sum(0)
        valid = wsum > 0
        est = np.where(valid, (w0 * L).sum(0) / np.where(valid, wsum, 1.0), 0.0)
        w = w0
        if len(cands) > 1:
            for _ in range(3):
                r = L - est[None]
                w = w0 / (1.0 + (r / self.robust_scale) ** 2)
                ws = w.sum(0)
                est = np.where(ws > 0, (w * L).sum(0) / np.where(ws > 0, ws, 1.0), est)
        ws = w.sum(0)
        spread = np.sqrt(np.where(ws > 0, (w * (L - est[None]) ** 2).sum(0) / np.where(ws > 0, ws, 1.0), 0.0))
        # Output confidence: weighted mean input confidence × agreement between windows.
        cw = [(c[1], c[2]) for c in cands if c[2] is not None]
        if cw:
            num = sum(a * b for a, b in cw)
            den = sum(a for a, _ in cw)
            conf = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        else:
            conf = np.ones((H, W))
        conf = conf / (1.0 + (spread / self.spread) ** 2)
        depth = np.where(valid, np.exp(est), 0.0)
        conf = np.where(valid, conf, 0.0)
        self.finish(i, depth, conf)
