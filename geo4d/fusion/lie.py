"""Small SO(3) helpers for the fusion solver (batched NumPy).

``exp``/``log`` come from scipy's ``Rotation``; the inverse Jacobians of the rotation logarithm
(needed by Gauss-Newton on rotation residuals) are not in scipy, so they are written here.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["so3_exp", "so3_log", "skew", "inv_left_jacobian", "inv_right_jacobian", "project_to_rotation"]


def so3_exp(omega: np.ndarray) -> np.ndarray:
    """Rotation matrices (…,3,3) of rotation vectors (…,3) (radians)."""
    omega = np.asarray(omega, dtype=np.float64)
    shape = omega.shape[:-1]
    return Rotation.from_rotvec(omega.reshape(-1, 3)).as_matrix().reshape(shape + (3, 3))


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vectors (…,3) of rotation matrices (…,3,3)."""
    R = np.asarray(R, dtype=np.float64)
    shape = R.shape[:-2]
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(shape + (3,))


def skew(v: np.ndarray) -> np.ndarray:
    """``[v]×`` (…,3,3) with ``[v]× w = v × w``."""
    v = np.asarray(v, dtype=np.float64)
    S = np.zeros(v.shape[:-1] + (3, 3))
    S[..., 0, 1] = -v[..., 2]
    S[..., 0, 2] = v[..., 1]
    S[..., 1, 0] = v[..., 2]
    S[..., 1, 2] = -v[..., 0]
    S[..., 2, 0] = -v[..., 1]
    S[..., 2, 1] = v[..., 0]
    return S


def inv_left_jacobian(theta: np.ndarray) -> np.ndarray:
    """``J_l⁻¹(θ)`` (…,3,3): ``log(exp(δ) exp(θ)) ≈ θ + J_l⁻¹(θ) δ`` for small ``δ``.

    ``J_l⁻¹ = I − ½[θ]× + (1/|θ|² − (1 + cos|θ|) / (2|θ| sin|θ|)) [θ]×²``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    a = np.linalg.norm(theta, axis=-1)[..., None, None]
    S = skew(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = np.where(a < 1e-6, 1.0 / 12.0, 1.0 / a**2 - (1.0 + np.cos(a)) / (2.0 * a * np.sin(a)))
    return np.eye(3) - 0.5 * S + coef * (S @ S)


def inv_right_jacobian(theta: np.ndarray) -> np.ndarray:
    """``J_r⁻¹(θ) = J_l⁻¹(−θ)``: ``log(exp(θ) exp(δ)) ≈ θ + J_r⁻¹(θ) δ``."""
    return inv_left_jacobian(-np.asarray(theta, dtype=np.float64))


def project_to_rotation(M: np.ndarray) -> np.ndarray:
    """Nearest rotation (Frobenius) to each matrix (…,3,3): ``U diag(1, 1, det(U Vᵀ)) Vᵀ``."""
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    d = np.where(d == 0, 1.0, d)
    U = U.copy()
    U[..., :, 2] *= d[..., None]
    return U @ Vt
