"""Disparity alignment and the per-pixel depth fusion.

* :func:`fit_disparity` — per window, ``disparity ≈ a / depth + b`` against the fused depth at the
  sampled pixels by iteratively re-weighted least squares (Huber), with a δ<1.25 quality score.
* :func:`disparity_log_depth` — a disparity map through a fitted affine map: log depth and its
  predicted log-depth error per pixel.
* :class:`DepthAccumulator` — collects, frame by frame, the candidate log depths of every window
  that sees the frame (point map and disparity) and fuses them into one depth map with a robust
  (Cauchy re-weighted) weighted mean in log depth; a frame is finished and its buffers released as
  soon as the last window that sees it has been added, so memory stays bounded by one window span.
  Pixels no point-map candidate reaches take the fused *fallback* (disparity-only) candidates; a
  :class:`DepthSource` map records which modality gave each pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import IntEnum

import numpy as np

from geo4d.fusion.robust import robust_sigma

__all__ = ["fit_disparity", "disparity_log_depth", "DepthAccumulator", "DepthSource"]

#: One depth candidate: ``(log depth, weight, confidence)``, each (H, W); weight 0 = no candidate;
#: ``confidence`` None for a candidate that only refines the depth (it does not enter the confidence).
Candidate = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


class DepthSource(IntEnum):
    """Which modality gave a fused pixel its depth (``FusionResult.depth_source``, uint8).

    * ``NONE`` (0): no depth (sky, invalid, or nothing trustworthy);
    * ``POINTMAP`` (1): some window's point map is valid there; the depth is the robust mean of the
      point-map depths and of the disparity depths of those windows;
    * ``DISPARITY`` (2): no window's point map is valid there; the depth comes from the disparity
      alone, through each window's fitted affine map (far regions beyond the point map's range).

    Example:
        >>> int(DepthSource.DISPARITY), DepthSource(1).name
        (2, 'POINTMAP')
    """

    NONE = 0
    POINTMAP = 1
    DISPARITY = 2


def fit_disparity(disp: np.ndarray, inv_depth: np.ndarray, w: np.ndarray, iterations: int = 8) -> dict:
    """Robust affine fit ``disp ≈ a · inv_depth + b``.

    Args:
        disp: (n,) predicted disparities.
        inv_depth: (n,) inverse of the fused depth at the same pixels.
        w: (n,) weights (0 = unused).

    Returns:
        dict with ``a``, ``b``, ``n`` (pixels used), ``delta_1_25`` (share of pixels whose depth from
        the fitted disparity is within a factor 1.25 of the fused depth), ``log_sigma`` (robust
        spread of the log-depth difference) and ``sigma`` (robust spread σ̂ of the disparity residual
        ``disp − a · inv_depth − b``, in disparity units).

    Example:
        >>> x = np.linspace(0.1, 1.0, 50)
        >>> r = fit_disparity(3 * x - 0.2, x, np.ones(50))
        >>> round(r["a"], 6), round(r["b"], 6), r["delta_1_25"]
        (3.0, -0.2, 1.0)
    """
    ok = (w > 0) & np.isfinite(disp) & np.isfinite(inv_depth) & (inv_depth > 0)
    out = {"a": float("nan"), "b": float("nan"), "n": int(ok.sum()), "delta_1_25": 0.0, "log_sigma": float("inf"),
           "sigma": float("inf")}
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
    out.update(a=float(a), b=float(b), delta_1_25=float((w0 * within).sum() / w0.sum()), sigma=robust_sigma(r))
    if good.any():
        ld = np.log(ratio[good])
        out["log_sigma"] = robust_sigma(ld)
    return out


def disparity_log_depth(disp: np.ndarray, fit: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth from a disparity map through a fitted affine map ``disp = a / depth + b``.

    ``log depth = −log((disp − b) / a)``; its predicted error (log depth, one σ) is the fit's residual
    spread carried through the map, ``σ_disp / (disp − b)`` (``d log depth = −d disp / (a · inv)``),
    floored at the fit's own log-depth spread ``log_sigma``.

    Args:
        disp: (...) disparities.
        fit: a :func:`fit_disparity` result with finite ``a > 0``, ``b``, ``sigma``, ``log_sigma``.

    Returns:
        ``(log_depth, log_sigma, ok)`` of ``disp``'s shape; ``ok`` is False where the map gives no
        positive inverse depth (``disp ≤ b``: beyond the farthest depth the map can express, e.g. sky);
        ``log_depth`` is 0 and ``log_sigma`` inf there.

    Example:
        >>> fit = {"a": 2.0, "b": 0.1, "sigma": 0.01, "log_sigma": 0.001}
        >>> ld, sl, ok = disparity_log_depth(np.array([1.1, 0.2, 0.05]), fit)
        >>> np.round(np.exp(ld[:2]), 6).tolist(), np.round(sl[:2], 3).tolist(), ok.tolist()
        ([2.0, 20.0], [0.01, 0.1], [True, True, False])
    """
    excess = np.asarray(disp, dtype=np.float64) - fit["b"]  # a · inverse depth
    ok = excess > 0
    safe = np.where(ok, excess, 1.0)
    log_depth = np.where(ok, np.log(fit["a"]) - np.log(safe), 0.0)
    log_sigma = np.where(ok, np.maximum(fit["sigma"] / safe, fit["log_sigma"]), np.inf)
    return log_depth, log_sigma, ok


class DepthAccumulator:
    """Streams window candidates into fused per-frame depth maps.

    Two tiers per pixel: the *main* candidates (point map, and disparity where the point map is
    valid) and the *fallback* candidates (disparity alone, where that window's point map is
    invalid). A pixel with a main candidate is fused from its main candidates only
    (:attr:`DepthSource.POINTMAP`); a pixel with none is fused from its fallback candidates
    (:attr:`DepthSource.DISPARITY`) when the fallback candidates agree — their weighted spread
    around the estimate at most ``fallback_max_spread``; otherwise it has no depth
    (:attr:`DepthSource.NONE`). Without fallback candidates the result is exactly the main fusion.

    Args:
        n_frames, height, width: output size.
        cover_count: (T,) number of windows that will be added for each frame.
        finish: called as ``finish(i, depth (H,W), confidence (H,W), source (H,W) uint8)`` when frame
            ``i`` is complete (``source``: :class:`DepthSource` codes).
        robust_scale: Cauchy scale (log depth) of the per-pixel re-weighting.
        spread: log-depth spread at which the output confidence halves.
        fallback_max_spread: largest log-depth spread of the fallback candidates of a pixel for it
            to get a fallback depth (windows that disagree more leave it invalid).

    Example:
        >>> out = {}
        >>> acc = DepthAccumulator(1, 1, 2, np.array([1]), lambda i, d, c, s: out.update(d=d, s=s), 0.15, 0.05)
        >>> one = np.ones((1, 2))
        >>> acc.add(0, [(np.log(2) * one, np.array([[1.0, 0.0]]), one)],
        ...         fallback=[(np.log(5) * one, one, one)])
        >>> np.round(out["d"], 6).tolist(), out["s"].tolist()
        ([[2.0, 5.0]], [[1, 2]])
    """

    def __init__(self, n_frames: int, height: int, width: int, cover_count: np.ndarray,
                 finish: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None], robust_scale: float,
                 spread: float, fallback_max_spread: float = np.inf):
        self.T, self.H, self.W = n_frames, height, width
        self.fallback_max_spread = fallback_max_spread
        self.remaining = np.asarray(cover_count, dtype=int).copy()
        self.finish = finish
        self.robust_scale = robust_scale
        self.spread = spread
        self.buf: dict[int, list] = {}
        self.fallback: dict[int, list] = {}

    def add(self, i: int, candidates: Sequence[Candidate], fallback: Sequence[Candidate] = ()) -> None:
        """Add one window's candidates for frame ``i``: main ``[(log_depth, weight, confidence), …]``
        (each (H,W); weight 0 = no candidate; ``confidence`` is the input confidence shown in the
        output, ``None`` for candidates that only refine depth) and ``fallback`` ones (same form, a
        confidence each). Finishes the frame when complete."""
        self.buf.setdefault(i, []).extend(candidates)
        if fallback:
            self.fallback.setdefault(i, []).extend(fallback)
        self.remaining[i] -= 1
        if self.remaining[i] == 0:
            self._finish(i)

    def _finish(self, i: int) -> None:
        """Fuse frame ``i``: the main tier, then the fallback tier where the main one has no depth."""
        depth, conf, valid, _ = self._fuse(self.buf.pop(i, []))
        source = np.where(valid, np.uint8(DepthSource.POINTMAP), np.uint8(DepthSource.NONE))
        fb = self.fallback.pop(i, [])
        if fb:
            d2, c2, v2, spread2 = self._fuse(fb)
            use = v2 & ~valid & (spread2 <= self.fallback_max_spread)
            depth, conf = np.where(use, d2, depth), np.where(use, c2, conf)
            source[use] = DepthSource.DISPARITY
        self.finish(i, depth, conf, source)

    def _fuse(self, cands: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Robust weighted mean (3 Cauchy rounds when several windows see it) of the log depths.

        Returns ``(depth, confidence, valid, spread)`` (H,W). Confidence = weighted mean input confidence ÷
        (1 + (spread / ``self.spread``)²), ``spread`` the weighted standard deviation of the
        candidates around the estimate; depth and confidence 0 where no candidate has weight.
        """
        H, W = self.H, self.W
        if not cands:
            return np.zeros((H, W)), np.zeros((H, W)), np.zeros((H, W), bool), np.zeros((H, W))
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
        return depth, conf, valid, spread
