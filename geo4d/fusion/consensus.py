"""Consensus initialisation: every frame's first pose and every window's similarity from all the
windows that see it, so that no single (corrupted) window steers the start of the refinement.

Chaining (:func:`geo4d.fusion.solver.chain_init`) places a frame from the first window that reaches
it. Starting from that placement, :func:`consensus_init` alternates, ``rounds`` times:

1. **frames**: ``R_i`` = robust rotation mean of ``Q_g R_q`` over the pairs ``q`` (window ``g``) that
   see frame ``i``; ``c_i`` = the mean of ``s_g Q_g c_q + t_g`` weighted by the same Cauchy weights
   times a Cauchy weight on the centre's distance;
2. **windows**: ``Q_g`` = robust rotation mean of ``R_i R_qᵀ`` over the window's frames, weighted by
   the pairs' frame-consensus weights (a pair out-voted at its frame does not steer its window);
   ``t_g`` = weighted mean of ``c_i − s_g Q_g c_q``; the log scales ``s_g`` are the chain's (depth
   ratios on shared pixels, which a rotation error does not change);

then re-expresses everything in the camera of frame 0 (the world). A window whose frames disagree
with the other windows gets small weights at every one of them, whatever order it came in.

The robust rotation mean is batched (one per frame, or per window): a medoid start (the rotation
with the smallest summed angle to the others), then a chordal mean re-weighted by a Cauchy loss on
the angle with scale ``3 · max(σ̂, 0.05°)``, as :func:`geo4d.fusion.solver.robust_rotation_mean`
does for one set — written here for (N, C) sets at once because no library averages many small
sets of rotations in one call.

Example:
    >>> import numpy as np
    >>> from geo4d.fusion.lie import so3_exp
    >>> Rs = so3_exp(np.array([[[0, 0, 0.01], [0, 0, 0.011], [0, 0, 0.3]]]))  # (1, 3, 3, 3)
    >>> R, w = batched_rotation_means(Rs, np.ones((1, 3)))
    >>> bool(w[0, 2] < 0.01 < w[0, 0])
    True
"""

from __future__ import annotations

import numpy as np

from geo4d.fusion.lie import project_to_rotation, so3_exp, so3_log
from geo4d.fusion.robust import MAD_TO_SIGMA

__all__ = ["batched_rotation_means", "consensus_init"]

_MIN_SCALE = np.radians(0.05)  # rad: smallest Cauchy scale of the rotation means
_MIN_CENTRE_SCALE = 1e-6  # relative to the scene depth: smallest Cauchy scale of the centre means


def _angles(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Angles (…) between rotations A and B (…,3,3): ``arccos((tr(AᵀB) − 1)/2)``."""
    tr = np.einsum("...ji,...ji->...", A, B)
    return np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))


def _masked_median(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Median over the last axis of ``x`` where ``ok`` (NaN where nothing is ok)."""
    # np.nanmedian goes through masked arrays for small rows (slow); sorting with the absent last is not
    xs = np.sort(np.where(ok, x, np.inf), axis=-1)
    n = ok.sum(-1)
    lo = np.take_along_axis(xs, np.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0]
    hi = np.take_along_axis(xs, np.minimum(n // 2, xs.shape[-1] - 1)[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, 0.5 * (lo + hi), np.nan)


def batched_rotation_means(Rs: np.ndarray, w: np.ndarray, iterations: int = 8,
                           pooled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Robust means of N sets of up to C rotations.

    Args:
        Rs: (N, C, 3, 3) rotations.
        w: (N, C) prior weights ≥ 0 (0 = absent).
        iterations: Cauchy re-weighting rounds.
        pooled: one Cauchy scale for all sets (σ̂ of every angle to its mean), not one per set —
            steadier when the sets are small and share one noise level (the frames of a video).

    Returns:
        ``(R (N,3,3), weights (N,C))``: the means (identity for an empty set) and the final robust
        weights in [0, 1] (0 where absent).
    """
    if Rs.ndim != 4 or Rs.shape[-2:] != (3, 3) or w.shape != Rs.shape[:2]:
        raise ValueError(f"batched_rotation_means: expected Rs (N,C,3,3) and w (N,C), got {Rs.shape} and {w.shape}")
    ok = w > 0
    N, C = w.shape
    if C == 0:
        return np.tile(np.eye(3), (N, 1, 1)), np.zeros((N, 0))
    ang = _angles(Rs[:, :, None], Rs[:, None, :])  # (N,C,C)
    cost = np.where(ok[:, None, :], w[:, None, :] * ang, 0.0).sum(-1)
    R = Rs[np.arange(N), np.argmin(np.where(ok, cost, np.inf), axis=1)]
    rw = np.where(ok, 1.0, 0.0)
    for _ in range(iterations):
        a = _angles(R[:, None], Rs)
        if pooled:
            scale = np.full(N, max(MAD_TO_SIGMA * float(np.median(a[ok])), _MIN_SCALE))
        else:
            scale = np.maximum(MAD_TO_SIGMA * np.nan_to_num(_masked_median(a, ok), nan=0.0), _MIN_SCALE)
        rw = np.where(ok, 1.0 / (1.0 + (a / (3.0 * scale[:, None])) ** 2), 0.0)
        M = np.einsum("nc,ncij->nij", w * rw, Rs)
        R = np.where((w * rw).sum(1)[:, None, None] > 0, project_to_rotation(M + 1e-300 * np.eye(3)), np.eye(3))
    return R, rw


def _centre_means(X: np.ndarray, w: np.ndarray, scale_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cauchy re-weighted means (N,3) of N sets of up to C points X (N,C,3) with prior weights w
    (N,C); distances are compared relative to ``scale_ref`` (N,) (the scene depth). Returns
    ``(means, robust weights (N,C))``."""
    ok = w > 0
    med = np.stack([_masked_median(X[..., j], ok) for j in range(3)], -1)
    c = np.nan_to_num(med)
    rw = ok.astype(float)
    for _ in range(4):
        e = np.linalg.norm(X - c[:, None], axis=-1) / scale_ref[:, None]
        s = np.maximum(MAD_TO_SIGMA * np.nan_to_num(_masked_median(e, ok), nan=0.0), _MIN_CENTRE_SCALE)
        rw = np.where(ok, 1.0 / (1.0 + (e / (3.0 * s[:, None])) ** 2), 0.0)
        ww = w * rw
        c = np.where(ww.sum(1)[:, None] > 0, (ww[..., None] * X).sum(1) / np.maximum(ww.sum(1), 1e-300)[:, None], c)
    return c, rw


def _cover(frame: np.ndarray, ok: np.ndarray, T: int) -> np.ndarray:
    """(T, C) pair indices covering each frame (-1 = none), from the pairs' frames (P,) where ``ok``."""
    q_ok = np.flatnonzero(ok)
    counts = np.bincount(frame[q_ok], minlength=T)
    C = max(1, int(counts.max()) if len(q_ok) else 1)
    order = q_ok[np.argsort(frame[q_ok], kind="stable")]
    slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    cover = np.full((T, C), -1)
    cover[frame[order], slot] = order
    return cover


def _window_graph(pairs, ok: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges between windows that share frames, and each edge's relative rotation.

    For windows g < h seeing frame i (cameras ``R_gi``, ``R_hi`` in their own frames),
    ``Q_gᵀ Q_h = R_gi R_hiᵀ``; the edge's ``Z_gh`` is the robust mean of that over the shared frames
    (edges with at least 2). Memory and time are linear in the frames (a frame's covering pairs).
    Returns ``(g (E,), h (E,), Z (E,3,3))``.
    """
    cover = _cover(pairs.i, ok, T)
    a, b = np.triu_indices(cover.shape[1], 1)
    qa, qb = cover[:, a].reshape(-1), cover[:, b].reshape(-1)
    m = (qa >= 0) & (qb >= 0)
    qa, qb = qa[m], qb[m]
    swap = pairs.g[qa] > pairs.g[qb]
    qa, qb = np.where(swap, qb, qa), np.where(swap, qa, qb)
    G = int(pairs.g.max()) + 1
    keys, inv, counts = np.unique(pairs.g[qa] * G + pairs.g[qb], return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    slot = np.empty(len(inv), int)
    slot[order] = np.arange(len(inv)) - np.repeat(np.cumsum(counts) - counts, counts)
    E, C = len(keys), int(counts.max()) if len(keys) else 0
    sets, w = np.tile(np.eye(3), (E, max(C, 1), 1, 1)), np.zeros((E, max(C, 1)))
    sets[inv, slot] = np.einsum("nij,nkj->nik", pairs.R_pm[qa], pairs.R_pm[qb])
    w[inv, slot] = 1.0
    keep = counts >= 2
    Z, _ = batched_rotation_means(sets[keep], w[keep])
    return keys[keep] // G, keys[keep] % G, Z


def _average_window_rotations(Q: np.ndarray, eg: np.ndarray, eh: np.ndarray, Z: np.ndarray,
                              iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Robust rotation averaging over the window graph: ``Q_g Z_gh ≈ Q_h`` for every edge, window 0
    fixed (the gauge).

    Gauss-Newton on world-frame corrections (``e = log(Q_g Z_gh Q_hᵀ) ≈ e⁰ + ω_g − ω_h``, a
    weighted graph Laplacian solve per axis), started with equal edge weights and then re-weighted
    by a Cauchy loss on the edge angle with one pooled scale ``3 · max(σ̂, 0.05°)``; a window whose
    views disagree with its neighbours gets small weights on all its edges. Returns ``(Q (G,3,3),
    edge weights (E,))``.
    """
    G = len(Q)
    Q = Q.copy()
    we = np.ones(len(eg))
    for it in range(iterations):
        e = so3_log(np.einsum("nij,njk,nlk->nil", Q[eg], Z, Q[eh]))  # (E,3)
        if it > 0:
            a = np.linalg.norm(e, axis=-1)
            scale = max(MAD_TO_SIGMA * float(np.median(a)), _MIN_SCALE)
            we = 1.0 / (1.0 + (a / (3.0 * scale)) ** 2)
        L = np.zeros((G, G))
        np.add.at(L, (eg, eg), we)
        np.add.at(L, (eh, eh), we)
        np.add.at(L, (eg, eh), -we)
        np.add.at(L, (eh, eg), -we)
        b = np.zeros((G, 3))
        np.add.at(b, eg, we[:, None] * e)
        np.add.at(b, eh, -we[:, None] * e)
        omega = np.zeros((G, 3))
        L1 = L[1:, 1:] + 1e-9 * np.eye(G - 1)
        omega[1:] = np.linalg.solve(L1, -b[1:]) if G > 1 else omega[1:]
        Q = so3_exp(omega) @ Q
        if float(np.abs(omega).max()) < 1e-10:
            break
    return Q, we


def consensus_init(state, pairs, n_frames: int, rounds: int = 3):
    """Refine a chained start by robust consensus over every window that sees each frame.

    Args:
        state: :class:`geo4d.fusion.solver.State` from :func:`~geo4d.fusion.solver.chain_init`
            (its log scales are kept).
        pairs: :class:`geo4d.fusion.solver.PairData`.
        n_frames: T.
        rounds: frame/window alternations.

    Returns:
        ``(state, weights (P,))``: the consensus state (world = camera of frame 0) and each pair's
        agreement with the consensus at its frame (rotation × centre Cauchy weights, in [0, 1]; 0 for
        pairs without a point-map camera, 1 for frames seen by one pair only).
    """
    T, G, P = n_frames, len(state.logs), pairs.n_pairs
    ok = pairs.pm_ok
    if not ok.any():
        return state, np.zeros(P)
    st = state.copy()
    cover = _cover(pairs.i, ok, T)
    valid = cover >= 0
    qq = np.where(valid, cover, 0)
    V = int(pairs.k.max()) + 1
    win = np.full((G, V), -1)
    win[pairs.g[ok], pairs.k[ok]] = np.flatnonzero(ok)
    wvalid = win >= 0
    wq = np.where(wvalid, win, 0)
    med = _masked_median(pairs.logz, pairs.wz > 0)
    pair_w = np.zeros(P)
    eg, eh, Z = _window_graph(pairs, ok, T)
    if len(eg):
        st.Q, _ = _average_window_rotations(st.Q, eg, eh, Z)
    for _ in range(rounds):
        s = np.exp(st.logs)
        Mq = np.einsum("pij,pjk->pik", st.Q[pairs.g], pairs.R_pm)  # world rotation of each pair's camera
        Xq = s[pairs.g, None] * np.einsum("pij,pj->pi", st.Q[pairs.g], pairs.c_pm) + st.t[pairs.g]
        depth = np.exp(np.nan_to_num(med) + st.logs[pairs.g])  # each pair's scene depth, world units
        R, wr = batched_rotation_means(Mq[qq], valid.astype(float), pooled=True)
        dref = np.maximum(_masked_median(depth[qq], valid), 1e-12)
        c, wc = _centre_means(Xq[qq], wr, np.nan_to_num(dref, nan=1.0))
        pair_w = np.zeros(P)
        pair_w[cover[valid]] = (wr * wc)[valid]
        single = valid.sum(1) == 1
        pair_w[cover[single, 0]] = 1.0
        st.R[:], st.c[:] = R, c
        # windows: robust fit of Q_g, then t_g, to the consensus frames
        Fi = pairs.i[wq]
        A = np.einsum("gvij,gvkj->gvik", R[Fi], pairs.R_pm[wq])
        wwin = np.where(wvalid, np.maximum(pair_w[wq], 1e-6), 0.0)
        st.Q, _ = batched_rotation_means(A, wwin)
        B = c[Fi] - s[:, None, None] * np.einsum("gij,gvj->gvi", st.Q, pairs.c_pm[wq])
        st.t = (wwin[..., None] * B).sum(1) / np.maximum(wwin.sum(1), 1e-300)[:, None]
    # frame 0 is the world: everything relative to its consensus camera
    R0, c0 = st.R[0].copy(), st.c[0].copy()
    st.R = np.einsum("ji,njk->nik", R0, st.R)
    st.c = np.einsum("ji,nj->ni", R0, st.c - c0)
    st.Q = np.einsum("ji,njk->nik", R0, st.Q)
    st.t = np.einsum("ji,nj->ni", R0, st.t - c0)
    st.R[0], st.c[0] = np.eye(3), 0.0
    return st, pair_w
