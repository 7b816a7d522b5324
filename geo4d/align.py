"""Similarity alignment of point sets (Umeyama 1991), the one implementation used project-wide.

Written by hand: the maintained alternatives (evo's ``geometry.umeyama_alignment``, roma) are either
unweighted or torch-only; this one is weighted, NumPy, and matches evo's result when unweighted.
"""

from __future__ import annotations

import numpy as np

from geo4d.cameras import check_shape

__all__ = ["umeyama", "sim3_matrix", "apply_sim3"]


def umeyama(
    points_src: np.ndarray,
    points_dst: np.ndarray,
    weights: np.ndarray | None = None,
    with_scale: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ≈ s R src + t``.

    Minimises ``Σ_i w_i |dst_i − (s R src_i + t)|²`` in closed form: with weighted means ``μ``,
    cross-covariance ``Σ = Σ_i w_i (dst_i − μ_d)(src_i − μ_s)ᵀ / Σ w``, SVD ``Σ = U D Vᵀ``,
    ``S = diag(1, 1, sign det(U Vᵀ))``: ``R = U S Vᵀ``, ``s = tr(D S) / σ²_src``, ``t = μ_d − s R μ_s``.

    Args:
        points_src: (N, 3) points in the source frame.
        points_dst: (N, 3) corresponding points in the destination frame.
        weights: (N,) non-negative weights (default all 1).
        with_scale: estimate ``s`` (Sim(3)); otherwise ``s = 1`` (SE(3)).

    Returns:
        (s, R (3,3), t (3,)).

    Example:
        >>> src = np.random.default_rng(0).normal(size=(10, 3))
        >>> s, R, t = umeyama(src, 2.0 * src + 1.0)
        >>> round(s, 6), np.allclose(R, np.eye(3)), np.allclose(t, 1.0)
        (2.0, True, True)
    """
    check_shape(points_src, (None, 3), "points_src")
    check_shape(points_dst, (points_src.shape[0], 3), "points_dst")
    src = np.asarray(points_src, dtype=np.float64)
    dst = np.asarray(points_dst, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != src.shape[0]:
        raise ValueError(f"weights: expected shape ({src.shape[0]},), got {np.shape(weights)}")
    wsum = w.sum()
    if not np.isfinite(wsum) or wsum <= 0:
        raise ValueError("umeyama: weights must be finite and sum to a positive number")
    mu_s = (w[:, None] * src).sum(0) / wsum
    mu_d = (w[:, None] * dst).sum(0) / wsum
    xs = src - mu_s
    xd = dst - mu_d
    cov = (w[:, None] * xd).T @ xs / wsum
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    if with_scale:
        var_s = (w * (xs**2).sum(1)).sum() / wsum
        s = float(np.trace(np.diag(D) @ S) / var_s) if var_s > 0 else 1.0
    else:
        s = 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def sim3_matrix(s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4×4 matrix ``[[s R, t], [0, 1]]`` of a similarity transform."""
    check_shape(R, (3, 3), "R")
    M = np.eye(4)
    M[:3, :3] = s * np.asarray(R)
    M[:3, 3] = np.asarray(t).reshape(3)
    return M


def apply_sim3(s: float, R: np.ndarray, t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``s R p + t`` for points (…,3)."""
    check_shape(points, ("...", 3), "points")
    return s * np.einsum("ij,...j->...i", R, points) + t
