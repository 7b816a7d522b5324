"""Focal length per frame: robust temporal smoothing of the windows' estimates, and the choice
between one focal length for the video and one per frame (a zoom).

Every (window g, frame i) pair gives estimates of frame i's focal length (point-map PnP with a free
focal, per-frame ray intrinsics, a window's first point map). In log focal ``y_q`` (errors are
relative), with prior weights ``w_q ≥ 0``, the track ``f`` (T,) is a robust Whittaker smoother — a
discrete smoothing spline with a constant-velocity prior::

    f = argmin_f  Σ_q ω_q (y_q − f_{i_q})²  +  λ Σ_i (f_{i−1} − 2 f_i + f_{i+1})²

whose normal equations ``(diag(m) + λ DᵀD) f = b`` are pentadiagonal (``scipy.linalg.solveh_banded``,
linear in T); ``ω_q = w_q / (1 + (r_q / (c σ̂))²)`` are Cauchy weights of the residuals
(iteratively re-weighted, ``σ̂ = 1.4826 · median |r|``, at least ``FLOOR / 10``), so a window with
a wrong focal does not bend the track.

**The smoothing scale λ is chosen from the data**: 8-fold cross-validation over windows (fold of
window g = ``g mod 8``). A window's estimates share its error, so holding out whole windows scores a
curve by how well it predicts windows it has not seen — the disagreement of overlapping windows
about the same frame is the noise it is judged against. λ runs over a log grid from ``10⁻²`` to
``10¹⁰`` times the mean weight per frame (the top end is a straight line in log focal).

**Shared or per frame**: the constant (one focal, weighted mean of ``y``) is cross-validated the
same way. The focal varies when the best smoother predicts held-out windows clearly better than the
constant: ``cv_const − cv_smooth > max(cv_smooth, FLOOR²)`` (the smoother halves the held-out
squared error, and by more than ``FLOOR`` = 0.1 % rms, below which one focal is as good for any
use). On a constant focal the constant is the true model and the smoother cannot beat it by that
margin; on exact data both errors vanish and the floor keeps one focal.

Written by hand: scipy's ``make_smoothing_spline`` picks its scale by generalised cross-validation
over points, which trusts correlated errors (a window's frames) as independent evidence; no library
cross-validates over groups of a banded smoother.

Example:
    >>> T = 40
    >>> i = np.repeat(np.arange(T), 3)
    >>> zoom = 50.0 * (1 + 0.3 * i / (T - 1))
    >>> track = focal_track(i, zoom, np.ones(len(i)), i // 4, T)
    >>> track.varies, bool(np.allclose(track.focal, 50.0 * (1 + 0.3 * np.arange(T) / (T - 1)), rtol=1e-3))
    (True, True)
    >>> focal_track(i, np.full(len(i), 50.0), np.ones(len(i)), i // 4, T).varies
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from geo4d.cameras import check_shape
from geo4d.fusion.robust import robust_sigma, weighted_median

__all__ = ["FLOOR", "FocalTrack", "focal_track", "frame_medians"]

#: Relative rms change of the focal below which one focal length is kept (0.1 %).
FLOOR = 1e-3
#: Cross-validation folds over windows.
FOLDS = 8
#: The λ grid, in units of the mean weight per frame.
_LAMBDAS = 10.0 ** np.arange(-2.0, 10.5, 1.0)


@dataclass
class FocalTrack:
    """The result of :func:`focal_track`.

    Attributes:
        focal: (T,) smoothed focal length of every frame (pixels).
        constant: the one-focal estimate (robustly weighted geometric mean).
        varies: True when the held-out windows say the focal changes over the video.
        lam: the chosen smoothing scale λ (units of the mean weight per frame).
        noise: σ̂ of the estimates' disagreement about the same frame (relative, log units; NaN
            when no frame has two estimates) — reported, the decision uses the held-out errors.
        cv_smooth, cv_constant: held-out mean squared log error of the smoother and of the constant.
        weights: (N,) final robust weights ``ω`` of the estimates.
    """

    focal: np.ndarray
    constant: float
    varies: bool
    lam: float
    noise: float
    cv_smooth: float
    cv_constant: float
    weights: np.ndarray

    def summary(self) -> dict:
        """JSON-able record for the diagnostics (no per-estimate arrays)."""
        return {"varies": bool(self.varies), "lambda": float(self.lam), "noise_rel": float(self.noise),
                "cv_smooth": float(self.cv_smooth), "cv_constant": float(self.cv_constant),
                "constant": float(self.constant)}


def frame_medians(frames: np.ndarray, values: np.ndarray, weights: np.ndarray, n_frames: int) -> np.ndarray:
    """(T,) weighted median of the values of each frame (NaN where a frame has none) — unsmoothed.

    Args:
        frames: (N,) frame index of each value, in ``[0, T)``.
        values: (N,) values; weights: (N,) ≥ 0 (non-finite values and weights ≤ 0 are left out).
    """
    frames, values, weights = _checked(frames, values, weights, n_frames)
    out = np.full(int(n_frames), np.nan)
    order = np.argsort(frames, kind="stable")
    cuts = np.flatnonzero(np.diff(frames[order])) + 1
    for idx in np.split(order, cuts):
        if len(idx):
            out[frames[idx[0]]] = weighted_median(values[idx], weights[idx])
    return out


def focal_track(frames: np.ndarray, focals: np.ndarray, weights: np.ndarray, groups: np.ndarray,
                n_frames: int, *, robust_scale: float = 4.0, rounds: int = 3) -> FocalTrack:
    """Smooth per-(window, frame) focal estimates over time and say whether the focal changes.

    Args:
        frames: (N,) frame of each estimate, in ``[0, T)``.
        focals: (N,) focal estimates (pixels); non-finite or ≤ 0 ones are ignored.
        weights: (N,) prior weights ≥ 0 (e.g. the modality's α).
        groups: (N,) window of each estimate (its cross-validation fold is ``window mod 8``).
        n_frames: T.
        robust_scale: Cauchy scale of the robust weights, in σ̂ of the residuals.
        rounds: re-weighting rounds (each re-chooses λ).

    Returns:
        :class:`FocalTrack`; raises ``ValueError`` when no estimate is usable.
    """
    frames, focals, weights = _checked(frames, focals, weights, n_frames)
    check_shape(groups, (len(frames),), "groups")
    T = int(n_frames)
    ok = np.isfinite(focals) & (focals > 0) & (weights > 0)
    if not ok.any():
        raise ValueError("focal_track: no usable focal estimate (all non-finite, <= 0 or weight 0)")
    i, y, w = frames[ok], np.log(focals[ok]), weights[ok].astype(np.float64)
    g = np.asarray(groups)[ok]
    folds = (g % FOLDS) if len(np.unique(g)) >= 2 else (i % FOLDS)
    med = frame_medians(i, y, w, T)
    multi = np.bincount(i, minlength=T)[i] >= 2
    noise = robust_sigma(y[multi] - med[i[multi]]) if multi.any() else float("nan")
    omega, lam, cvs = w.copy(), float(_LAMBDAS[-1]), float("inf")
    for _ in range(max(1, rounds)):
        scores = _cv(T, i, y, omega, folds, _LAMBDAS)
        k = int(np.argmin(scores))
        lam, cvs = float(_LAMBDAS[k]), float(scores[k])
        f = _smooth(T, i, y, omega, lam)
        r = y - f[i]
        sig = max(robust_sigma(r[w > 0]), 0.1 * FLOOR)  # errors far below FLOOR are never outliers
        omega = w / (1.0 + (r / (robust_scale * sig)) ** 2)
    # Both models judged with the same (final) robust weights.
    cvs = float(_cv(T, i, y, omega, folds, np.array([lam]))[0])
    cvc = float(_cv(T, i, y, omega, folds, None)[0])
    const = float(np.sum(omega * y) / np.sum(omega))
    varies = bool(cvc - cvs > max(cvs, FLOOR**2))
    full_w = np.zeros(len(frames))
    full_w[ok] = omega
    return FocalTrack(np.exp(f), float(np.exp(const)), varies, lam, noise, cvs, cvc, full_w)


def _checked(frames, values, weights, n_frames) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inputs as arrays, with one-line errors for shapes and frame indices."""
    frames = np.asarray(frames)
    check_shape(frames, (None,), "frames")
    N = len(frames)
    check_shape(values, (N,), "values")
    check_shape(weights, (N,), "weights")
    if N and (frames.min() < 0 or frames.max() >= n_frames):
        raise ValueError(f"frames: expected indices in [0, {n_frames}), got {int(frames.min())}…{int(frames.max())}")
    return frames.astype(np.int64), np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)


def _smooth(T: int, i: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float) -> np.ndarray:
    """(T,) Whittaker smoother: ``(diag(m) + λ m̄ DᵀD) f = b`` by a banded Cholesky solve."""
    m = np.bincount(i, weights=w, minlength=T)
    b = np.bincount(i, weights=w * y, minlength=T)
    return _solve(m, b, lam)


def _solve(m: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """(T,) solution of ``(diag(m) + λ m̄ DᵀD) f = b`` (``m̄`` the mean of ``m``); the weighted mean
    where fewer than 2 frames carry weight (or T < 3)."""
    from scipy.linalg import solveh_banded

    T = len(m)
    if T < 3 or np.count_nonzero(m) < 2:
        return np.full(T, float(b.sum() / m.sum()) if m.sum() > 0 else 0.0)
    mbar = float(m.sum()) / T
    bands = _DtD_bands(T)
    ab = lam * mbar * bands  # upper form: ab[2] main diagonal, ab[1] first, ab[0] second super-diagonal
    ab[2] += m + 1e-12 * mbar
    return solveh_banded(ab, b, check_finite=False)


@lru_cache(maxsize=8)
def _DtD_bands_cached(T: int) -> np.ndarray:
    d = np.array([1.0, -2.0, 1.0])
    ab = np.zeros((3, T))
    # (DᵀD)_{j, j+k} = Σ_r D_{r,j} D_{r,j+k}, D the (T−2, T) second-difference matrix: each row r
    # adds d[a]·d[a+k] at j = r + a; band k is stored right-aligned (ab[2 − k, k:]).
    for k in range(3):
        for a in range(3 - k):
            ab[2 - k, k + a : k + a + T - 2] += d[a] * d[a + k]
    ab.setflags(write=False)
    return ab


def _DtD_bands(T: int) -> np.ndarray:
    """(3, T) ``DᵀD`` in ``solveh_banded``'s upper form (a copy-free read-only array)."""
    return _DtD_bands_cached(int(T))


def _cv(T: int, i: np.ndarray, y: np.ndarray, w: np.ndarray, folds: np.ndarray,
        lams: np.ndarray | None) -> np.ndarray:
    """Held-out weighted mean squared error over the folds for each λ of ``lams`` ((L,)), or of
    the constant model (``lams`` None; shape (1,))."""
    L = 1 if lams is None else len(lams)
    num, den = np.zeros(L), 0.0
    for j in np.unique(folds):
        test = folds == j
        train = ~test
        if not (w[train] > 0).any() or not (w[test] > 0).any():
            continue
        if lams is None:
            preds = [np.full(T, np.sum(w[train] * y[train]) / np.sum(w[train]))]
        else:
            m = np.bincount(i[train], weights=w[train], minlength=T)
            b = np.bincount(i[train], weights=w[train] * y[train], minlength=T)
            preds = [_solve(m, b, lam) for lam in lams]
        for k, pred in enumerate(preds):
            num[k] += float(np.sum(w[test] * (y[test] - pred[i[test]]) ** 2))
        den += float(np.sum(w[test]))
    return num / den if den > 0 else np.full(L, np.inf)
