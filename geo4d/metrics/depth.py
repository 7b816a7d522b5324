"""Video depth metrics (Abs Rel, δ<1.25, …) with the benchmarks' per-sequence alignment.

The video-depth protocol of the Geo4D evaluation (see docs/evaluation.md) compares a whole
sequence at once: every frame and every valid pixel are flattened together, **one** scale ``s`` and
**one** shift ``t`` are fitted for the sequence in depth space by least absolute deviations
(``min Σ |s·pred + t − gt|``), the aligned prediction is optionally clipped from above, and the
metrics are computed over all ground-truth-valid pixels.

Alignment methods (``align=``):

``"scale_shift_l1"``
    The exact L1 (least-absolute-deviations) fit. ``F(s) = min_t Σ|gt − s·pred − t|`` is convex
    and piecewise linear in ``s`` (the inner minimum is attained at ``t = median(gt − s·pred)``),
    so a bracketed 1-D minimisation of ``F`` followed by the median gives the global optimum.
``"scale_shift_l1_adam"``
    A replica of the official evaluation's optimiser: start from ``s = median(gt)/median(pred)``
    (lower medians), ``t = 0``; Adam (PyTorch, default betas) on the *sum* of absolute residuals
    with learning rate ``adam_lr`` for at most ``adam_iters`` steps, stopping when the loss changes
    by less than 1e-6. It does not always reach the L1 optimum (with the KITTI settings
    lr 1e-4 / 1000 steps it barely leaves the median initialisation), which is why it exists: it
    reproduces the published protocol's numbers.
``"scale_l1"``
    Scale only, exact L1: ``s`` = weighted median of ``gt/pred`` with weights ``|pred|``.
``"median"``
    Median scaling ``s = median(gt)/median(pred)``.
``None``
    No alignment (metric predictions).

Nothing here knows about files or datasets; see :mod:`geo4d.datasets` for readers and
:data:`DEPTH_PROTOCOLS` for the per-benchmark settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "DEPTH_METRIC_KEYS",
    "DEPTH_ALIGN_METHODS",
    "DepthProtocol",
    "DEPTH_PROTOCOLS",
    "depth_metrics",
    "depth_metrics_protocol",
    "fit_scale_shift_l1",
    "fit_scale_shift_l1_adam",
    "fit_scale_l1",
    "lower_median",
]

#: Keys returned by :func:`depth_metrics` (δ values are fractions in [0, 1], not percent).
DEPTH_METRIC_KEYS = (
    "abs_rel",       # mean |p − g| / g
    "sq_rel",        # mean (p − g)² / g
    "rmse",          # sqrt(mean (p − g)²)
    "log_rmse",      # sqrt(mean (log p − log g)²), p clamped to ≥ 1e-5
    "delta_1_25",    # mean[max(p/g, g/p) < 1.25]
    "delta_1_25_2",  # … < 1.25²
    "delta_1_25_3",  # … < 1.25³
    "valid_pixels",  # number of pixels the metrics are averaged over
    "scale",         # fitted s (1 when align is None)
    "shift",         # fitted t (0 unless a shift is fitted)
)

DEPTH_ALIGN_METHODS = ("scale_shift_l1", "scale_shift_l1_adam", "scale_l1", "median", None)

_LOG_CLAMP = 1e-5


@dataclass(frozen=True)
class DepthProtocol:
    """Settings of one benchmark's video-depth evaluation (see :data:`DEPTH_PROTOCOLS`).

    Attributes:
        name: protocol name as recorded in result tables.
        max_depth: ground truth is valid where ``0 < gt < max_depth`` (``None``: ``gt > 0``).
        post_clip_max: aligned predictions are clipped to ``≤ post_clip_max`` (``None``: no clip).
        align: alignment method (see module docstring).
        adam_lr, adam_iters: settings of the ``"scale_shift_l1_adam"`` replica.
        use_align_mask: whether the prediction's validity mask restricts the alignment pixels
            (the metrics always use every ground-truth-valid pixel).
        eval_size: (W, H) at which frames are fed to the predictor.
    """

    name: str
    max_depth: float | None
    post_clip_max: float | None
    align: str | None = "scale_shift_l1_adam"
    adam_lr: float = 1e-2
    adam_iters: int = 5000
    use_align_mask: bool = True
    eval_size: tuple[int, int] | None = None
    notes: str = field(default="", compare=False)

    def with_align(self, align: str | None) -> DepthProtocol:
        """The same protocol with another alignment method (e.g. the exact L1 fit)."""
        if align not in DEPTH_ALIGN_METHODS:
            raise ValueError(f"align: expected one of {DEPTH_ALIGN_METHODS}, got {align!r}")
        d = asdict(self)
        d["align"] = align
        return DepthProtocol(**d)

    def parameters(self) -> dict:
        """JSON-able description (stored in result tables' metadata)."""
        d = asdict(self)
        d["eval_size"] = list(self.eval_size) if self.eval_size else None
        return d


#: The video-depth protocols of the Geo4D evaluation, by dataset.
DEPTH_PROTOCOLS: dict[str, DepthProtocol] = {
    "sintel": DepthProtocol("sintel-video-depth", 70.0, 70.0, adam_lr=1e-2, adam_iters=5000,
                            use_align_mask=True, eval_size=(576, 256),
                            notes="all 23 training sequences, final pass, cap 70"),
    "bonn": DepthProtocol("bonn-video-depth", 70.0, 70.0, adam_lr=1e-2, adam_iters=5000,
                          use_align_mask=True, eval_size=(512, 384),
                          notes="5 sequences, frames 30-139, depth /5000, cap 70"),
    "kitti": DepthProtocol("kitti-video-depth", None, None, adam_lr=1e-4, adam_iters=1000,
                           use_align_mask=False, eval_size=(640, 192),
                           notes="13 val drives, first 110 annotated maps, depth /256, no cap"),
}


def lower_median(x: np.ndarray) -> float:
    """The lower median (element ``(n−1)//2`` of the sorted values), as ``torch.median`` returns it."""
    x = np.asarray(x).reshape(-1)
    if x.size == 0:
        raise ValueError("lower_median: empty input")
    k = (x.size - 1) // 2
    return float(np.partition(x, k)[k])


def _l1_objective(s: float, pred: np.ndarray, gt: np.ndarray, buf: np.ndarray) -> float:
    np.multiply(pred, -s, out=buf)
    buf += gt
    k = (buf.size - 1) // 2
    # Any value between the two middle residuals minimises Σ|r − t|; use the lower one.
    t = np.partition(buf, k)[k]
    buf -= t
    np.abs(buf, out=buf)
    return float(buf.sum())


def fit_scale_shift_l1(pred: np.ndarray, gt: np.ndarray, *, rtol: float = 1e-9) -> tuple[float, float]:
    """Exact least-absolute-deviations fit ``gt ≈ s·pred + t``.

    ``F(s) = min_t Σ_i |gt_i − s·pred_i − t|`` is convex (a partial minimum of a jointly convex
    function) and its inner minimiser is ``t = median(gt − s·pred)``; ``F`` is minimised by a
    bracketed Brent search (scipy), then ``t`` is the median at that ``s``. On large inputs the
    search first runs on a random subset to narrow the bracket. Written by hand because no
    maintained library offers an L1 regression that scales to tens of millions of samples
    (``scipy.optimize.linprog`` needs one variable per sample).

    Args:
        pred: (N,) predicted depths.
        gt: (N,) target depths.
        rtol: relative tolerance on ``s``.

    Returns:
        (s, t) minimising ``Σ |s·pred + t − gt|``.

    Example:
        >>> p = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
        >>> s, t = fit_scale_shift_l1(p, 2 * p + 1 + np.array([0, 0, 9.0, 0, 0]))  # one outlier
        >>> round(s, 6), round(t, 6)
        (2.0, 1.0)
    """
    from scipy.optimize import minimize_scalar

    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"fit_scale_shift_l1: pred {pred.shape} and gt {gt.shape} differ")
    if pred.size == 0:
        raise ValueError("fit_scale_shift_l1: no samples")
    if np.ptp(pred) == 0:  # constant prediction: the scale is not identifiable
        return 1.0, float(np.median(gt - pred))
    mp = np.median(pred)
    s0 = float(np.median(gt) / mp) if mp != 0 else 1.0
    if not np.isfinite(s0) or s0 == 0:
        s0 = 1.0
    if pred.size > 200_000:  # coarse solve on a subset, then refine on everything
        idx = np.random.default_rng(0).choice(pred.size, 200_000, replace=False)
        s0, _ = fit_scale_shift_l1(pred[idx], gt[idx], rtol=1e-6)
    buf = np.empty_like(pred)
    f = lambda s: _l1_objective(s, pred, gt, buf)  # noqa: E731
    # Bracket the minimum of the convex F: expand outwards from s0 until F rises on both sides.
    step = max(abs(s0), 1e-12) * (0.05 if pred.size <= 200_000 else 1e-3)
    a, b = s0 - step, s0 + step
    fa, f0, fb = f(a), f(s0), f(b)
    for _ in range(200):
        if fa >= f0 and fb >= f0:
            break
        if fa < f0:
            b, fb, s0, f0 = s0, f0, a, fa
            step *= 2.0
            a = s0 - step
            fa = f(a)
        else:
            a, fa, s0, f0 = s0, f0, b, fb
            step *= 2.0
            b = s0 + step
            fb = f(b)
    res = minimize_scalar(f, bracket=(a, s0, b), method="brent", tol=rtol)
    s = float(res.x) if res.fun <= f0 else s0
    r = gt - s * pred
    k = (r.size - 1) // 2
    t = float(np.partition(r, k)[k])
    return s, t


def fit_scale_l1(pred: np.ndarray, gt: np.ndarray) -> float:
    """Exact L1 scale ``argmin_s Σ |s·pred − gt|`` = weighted median of ``gt/pred`` (weights ``|pred|``)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1)
    nz = pred != 0
    if not nz.any():
        return 1.0
    ratio = gt[nz] / pred[nz]
    w = np.abs(pred[nz])
    order = np.argsort(ratio, kind="stable")
    cw = np.cumsum(w[order])
    k = int(np.searchsorted(cw, 0.5 * cw[-1]))
    return float(ratio[order][min(k, len(order) - 1)])


def fit_scale_shift_l1_adam(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    lr: float = 1e-2,
    max_iters: int = 5000,
    tol: float = 1e-6,
    dtype: str = "float32",
    device: str | None = None,
) -> tuple[float, float]:
    """The official evaluation's L1 alignment loop, reproduced (PyTorch Adam on ``Σ|s·pred + t − gt|``).

    Starts from ``s = lower_median(gt) / lower_median(pred)``, ``t = 0``; each step computes the
    loss, back-propagates, takes an Adam step (default betas/eps), and stops once the loss differs
    from the previous step's by less than ``tol``. ``dtype`` float32 is what the benchmark readers
    produce (ground truth is cast to float32 there), so it reproduces the published numbers.
    ``device`` defaults to CUDA when available (results then differ from CPU ones only by float32
    summation order).
    """
    import torch

    tdtype = getattr(torch, dtype)
    if device is None:  # on a CPU a step costs 0.2-0.6 s per 22 M pixels; a GPU makes it cheap
        device = "cuda" if torch.cuda.is_available() else "cpu"
    P = torch.as_tensor(np.asarray(pred).reshape(-1), device=device).to(tdtype)
    G = torch.as_tensor(np.asarray(gt).reshape(-1), device=device).to(tdtype)
    if P.numel() == 0:
        raise ValueError("fit_scale_shift_l1_adam: no samples")
    s_init = (torch.median(G) / torch.median(P)).item()
    s = torch.tensor([s_init], dtype=tdtype, device=P.device, requires_grad=True)
    t = torch.tensor([0.0], dtype=tdtype, device=P.device, requires_grad=True)
    opt = torch.optim.Adam([s, t], lr=lr)
    prev = None
    for _ in range(max_iters):
        opt.zero_grad()
        loss = torch.abs(s * P + t - G).sum()
        loss.backward()
        opt.step()
        if prev is not None and abs(prev - loss.item()) < tol:
            break
        prev = loss.item()
    return float(s.detach().item()), float(t.detach().item())


def _check_depth(pred, gt, valid, align_mask):
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred_depth: expected the shape of gt_depth {gt.shape}, got {pred.shape}")
    for name, m in (("valid", valid), ("align_mask", align_mask)):
        if m is not None and np.shape(m) != gt.shape:
            raise ValueError(f"{name}: expected shape {gt.shape}, got {np.shape(m)}")
    return pred, gt


def depth_metrics(
    pred_depth: np.ndarray,
    gt_depth: np.ndarray,
    valid: np.ndarray | None = None,
    align: str | None = "scale_shift_l1",
    max_depth: float | None = None,
    post_clip_max: float | None = None,
    *,
    align_mask: np.ndarray | None = None,
    adam_lr: float = 1e-2,
    adam_iters: int = 5000,
) -> dict[str, float]:
    """Depth metrics of a whole sequence after one per-sequence alignment.

    Steps (the Geo4D video-depth protocol):

    1. ``valid`` = finite ``gt`` with ``gt > 0`` (and ``gt < max_depth`` when given), AND the
       caller's ``valid`` mask. ``+inf`` (sky in synthetic scenes) and ``≤ 0`` are invalid.
    2. Alignment on ``valid ∩ align_mask``: see ``align`` in the module docstring.
    3. ``p = s·pred + t`` on every valid pixel, clipped to ``≤ post_clip_max`` when given.
    4. Over all valid pixels: Abs Rel ``mean|p−g|/g``, Sq Rel ``mean (p−g)²/g``,
       RMSE ``sqrt mean (p−g)²``; then ``p`` clamped to ``≥ 1e-5``: Log RMSE and
       ``δ<1.25^k = mean[max(p/g, g/p) < 1.25^k]``.

    Args:
        pred_depth: (…) predicted depth, any shape (e.g. (T, H, W) for a sequence).
        gt_depth: same shape, ground-truth depth.
        valid: optional bool mask of the same shape, ANDed with the GT validity.
        align: ``"scale_shift_l1"`` (exact L1), ``"scale_shift_l1_adam"`` (official optimiser
            replica), ``"scale_l1"``, ``"median"`` or ``None``.
        max_depth: upper bound (exclusive) on valid GT depths.
        post_clip_max: upper clip of aligned predictions.
        align_mask: optional bool mask restricting the pixels used to fit the alignment only.
        adam_lr, adam_iters: settings of the Adam replica.

    Returns:
        dict with :data:`DEPTH_METRIC_KEYS` (floats; δ as fractions). With no valid pixel the
        metrics are NaN and ``valid_pixels`` is 0.

    Raises:
        ValueError: shape mismatch, unknown ``align``, or a non-finite prediction on a valid pixel.

    Example:
        >>> gt = np.array([[1.0, 2.0], [4.0, np.inf]])
        >>> m = depth_metrics(2 * gt + 1, gt, align="scale_shift_l1")
        >>> round(m["abs_rel"], 9), m["delta_1_25"], m["valid_pixels"]
        (0.0, 1.0, 3.0)
        >>> m = depth_metrics(np.array([1.0, 3.0]), np.array([2.0, 2.0]), align=None)
        >>> m["abs_rel"], m["delta_1_25"]
        (0.5, 0.0)
    """
    if align not in DEPTH_ALIGN_METHODS:
        raise ValueError(f"align: expected one of {DEPTH_ALIGN_METHODS}, got {align!r}")
    pred, gt = _check_depth(pred_depth, gt_depth, valid, align_mask)
    mask = _gt_valid(gt, valid, max_depth)
    n = int(mask.sum())
    out = {k: float("nan") for k in DEPTH_METRIC_KEYS}
    out["valid_pixels"] = float(n)
    if n == 0:
        out["scale"], out["shift"] = 1.0, 0.0
        return out
    p = np.asarray(pred[mask], dtype=np.float64)
    g = np.asarray(gt[mask], dtype=np.float64)
    finite = np.isfinite(p)
    if not finite.all():
        raise ValueError(
            f"pred_depth: {int((~finite).sum())} non-finite values at valid ground-truth pixels"
        )
    fit = None if align_mask is None else np.asarray(align_mask, dtype=bool)[mask]
    s, t = _fit_alignment(p, g, align, fit, adam_lr=adam_lr, adam_iters=adam_iters)
    p = s * p + t
    if post_clip_max is not None:
        p = np.minimum(p, post_clip_max)
    out.update(_error_metrics(p, g))
    out["scale"], out["shift"] = float(s), float(t)
    return out


def _gt_valid(gt: np.ndarray, valid: np.ndarray | None, max_depth: float | None) -> np.ndarray:
    """Finite ``gt > 0`` (and ``< max_depth`` when given), AND the caller's ``valid`` mask."""
    with np.errstate(invalid="ignore"):
        mask = np.isfinite(gt) & (gt > 0)
        if max_depth is not None:
            mask &= gt < max_depth
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool)
    return mask


def _fit_alignment(p: np.ndarray, g: np.ndarray, align: str | None, fit: np.ndarray | None, *,
                   adam_lr: float, adam_iters: int) -> tuple[float, float]:
    """``(s, t)`` of the ``align`` method, fitted on the pixels where ``fit`` (None: all) is True."""
    if align is None:
        return 1.0, 0.0
    if fit is not None:
        if not fit.any():
            raise ValueError("depth_metrics: no pixel left to fit the alignment (valid ∩ align_mask is empty)")
        p, g = p[fit], g[fit]
    if align == "scale_shift_l1":
        return fit_scale_shift_l1(p, g)
    if align == "scale_shift_l1_adam":
        return fit_scale_shift_l1_adam(p, g, lr=adam_lr, max_iters=adam_iters)
    if align == "scale_l1":
        return fit_scale_l1(p, g), 0.0
    return float(np.median(g) / np.median(p)), 0.0  # median


def _error_metrics(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """Abs Rel, Sq Rel, RMSE of aligned ``p`` against ``g``; Log RMSE and δ with ``p`` clamped to ≥ 1e-5."""
    diff = p - g
    out = {"abs_rel": float(np.mean(np.abs(diff) / g)), "sq_rel": float(np.mean(diff**2 / g)),
           "rmse": float(np.sqrt(np.mean(diff**2)))}
    pc = np.maximum(p, _LOG_CLAMP)
    out["log_rmse"] = float(np.sqrt(np.mean((np.log(pc) - np.log(g)) ** 2)))
    ratio = np.maximum(pc / g, g / pc)
    out["delta_1_25"] = float(np.mean(ratio < 1.25))
    out["delta_1_25_2"] = float(np.mean(ratio < 1.25**2))
    out["delta_1_25_3"] = float(np.mean(ratio < 1.25**3))
    return out


def depth_metrics_protocol(
    pred_depth: np.ndarray,
    gt_depth: np.ndarray,
    protocol: DepthProtocol | str,
    *,
    valid: np.ndarray | None = None,
    align_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """:func:`depth_metrics` with a benchmark's settings (``"sintel"``, ``"bonn"``, ``"kitti"`` or a
    :class:`DepthProtocol`). ``align_mask`` is ignored when the protocol does not use one."""
    if isinstance(protocol, str):
        if protocol not in DEPTH_PROTOCOLS:
            raise ValueError(f"protocol: expected one of {sorted(DEPTH_PROTOCOLS)}, got {protocol!r}")
        protocol = DEPTH_PROTOCOLS[protocol]
    return depth_metrics(
        pred_depth, gt_depth, valid=valid, align=protocol.align, max_depth=protocol.max_depth,
        post_clip_max=protocol.post_clip_max,
        align_mask=align_mask if protocol.use_align_mask else None,
        adam_lr=protocol.adam_lr, adam_iters=protocol.adam_iters,
    )
