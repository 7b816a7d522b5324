"""Robust statistics shared by the fusion steps.

``MAD_TO_SIGMA = 1.4826 ≈ 1 / Φ⁻¹(3/4)``: the median absolute deviation of a normal distribution
times this factor is its standard deviation, so :func:`robust_sigma` estimates σ from residuals
while ignoring a minority of outliers.

Example:
    >>> import numpy as np
    >>> round(robust_sigma(np.array([-1.0, 1.0, 100.0])), 4)
    1.4826
    >>> weighted_median(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 5.0]))
    3.0
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAD_TO_SIGMA", "robust_sigma", "weighted_median"]

#: σ of a normal distribution per unit of its median absolute deviation, 1 / Φ⁻¹(3/4).
MAD_TO_SIGMA = 1.4826


def robust_sigma(residuals: np.ndarray) -> float:
    """σ̂ = 1.4826 · median |r| of the residuals ``r`` (any shape; NaN-free)."""
    return MAD_TO_SIGMA * float(np.median(np.abs(residuals)))


def weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    """The smallest ``x`` whose cumulative weight reaches half the total (NaN without a usable sample).

    Samples with a non-finite value or a weight ≤ 0 are left out; the rest goes to NumPy's weighted
    quantile (``method="inverted_cdf"``).
    """
    ok = np.isfinite(x) & (w > 0)
    if not ok.any():
        return float("nan")
    return float(np.quantile(x[ok], 0.5, weights=w[ok], method="inverted_cdf"))
