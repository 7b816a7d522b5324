"""Global alignment of the windows: closed-form chaining, then robust Levenberg-Marquardt.

Unknowns (all small; no per-pixel parameter):

* per frame ``i``: ``world_from_cam_i = (R_i, c_i)`` (frame 0 fixed at the identity);
* per window ``g``: a similarity ``S_g: x ↦ s_g Q_g x + t_g`` from the window's (z-shifted) point-map
  frame to the world (``s_0 = 1`` fixes the scale during the solve), and ``ρ_g``, the scale of its
  ray-map camera centres.

Measurements, for every (window ``g``, frame ``k``) pair ``q`` (frame ``i = start_g + k``):

* point-map camera ``(R^pm_q, c^pm_q)`` (PnP on the window's point map) and per-pixel camera-frame
  depths ``z_qp`` at sampled pixels;
* ray-map camera ``(R^ray_q, c^ray_q)`` (Procrustes + moments).

Residuals (each divided by a robustly estimated noise level and multiplied by the term's α):

* point-map term: ``log(R_iᵀ Q_g R^pm_q)``, ``(c_i − s_g Q_g c^pm_q − t_g)/d_i`` and, per pixel,
  ``log s_g + log z_qp − L_ip`` where the fused log depth ``L_ip`` is eliminated in closed form
  (a weighted mean over the windows that see frame ``i``) — this is the point-map distance of the
  Geo4D objective written as angle, relative position and relative depth;
* ray term: ``log(R_iᵀ Q_g R^ray_q)``, ``(c_i − ρ_g Q_g c^ray_q − t_g)/d_i``;
* smoothness: second differences of the rotation (``log(R_iᵀR_{i+1}) − log(R_{i−1}ᵀR_i)``) and of the
  centres, relative to the scene depth ``d_i``, with a per-frame, per-axis scale: the floor in the
  first round, then the local RMS acceleration of the previous round's fit (:func:`_smoothness_scales`).

``d_i`` is frame ``i``'s median depth. Start: the chain (:func:`chain_init`) replaced by the consensus
of all windows (:func:`geo4d.fusion.consensus.consensus_init`). Robustness: iteratively re-weighted
least squares with a Cauchy weight per (window, frame) pair and per modality; the noise levels are
re-estimated each round (median absolute residuals, on the pairs the previous round or the
consensus kept), so clean input gets a near-zero noise level and the smoothness prior does not bias
it; camera residuals are weighted by their per-axis noise. The normal equations are sparse and
banded in time (scipy.sparse).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve
from scipy.stats import chi2

from geo4d.fusion.consensus import consensus_init
from geo4d.fusion.lie import inv_left_jacobian, inv_right_jacobian, skew, so3_exp, so3_log
from geo4d.fusion.robust import MAD_TO_SIGMA, robust_sigma, weighted_median

__all__ = ["PairData", "State", "chain_init", "refine", "robust_rotation_mean"]

_ROT_FLOOR = 2e-5  # rad: smallest noise level assumed for rotations (≈ 0.001°)
_CENTRE_FLOOR = 2e-5  # relative to the scene depth
_DEPTH_FLOOR = 2e-5  # log depth


@dataclass
class PairData:
    """Per-(window, frame) measurements, P pairs with n sampled pixels each."""

    g: np.ndarray  # (P,) window index
    k: np.ndarray  # (P,) frame index inside the window
    i: np.ndarray  # (P,) frame index in the video
    R_pm: np.ndarray  # (P,3,3) point-map camera rotation (window frame)
    c_pm: np.ndarray  # (P,3) point-map camera centre (window units, z-shifted frame)
    pm_ok: np.ndarray  # (P,) bool
    logz: np.ndarray  # (P,n) log camera-frame depth at the samples (window units)
    wz: np.ndarray  # (P,n) sample weights, 0 = invalid
    R_ray: np.ndarray | None = None  # (P,3,3)
    c_ray: np.ndarray | None = None  # (P,3)
    ray_ok: np.ndarray | None = None  # (P,) bool

    @property
    def n_pairs(self) -> int:
        return len(self.g)


@dataclass
class State:
    R: np.ndarray  # (T,3,3) world_from_cam rotations
    c: np.ndarray  # (T,3) camera centres
    Q: np.ndarray  # (G,3,3) window rotations
    t: np.ndarray  # (G,3) window translations
    logs: np.ndarray  # (G,) window log scales (point maps)
    logrho: np.ndarray  # (G,) window log scales (ray centres)

    def copy(self) -> State:
        return State(self.R.copy(), self.c.copy(), self.Q.copy(), self.t.copy(), self.logs.copy(), self.logrho.copy())


# ---------------------------------------------------------------------------------------------
# Closed-form initialisation
# ---------------------------------------------------------------------------------------------
def robust_rotation_mean(Rs: np.ndarray, w: np.ndarray | None = None, iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Robust mean of rotations (N,3,3): chordal mean re-weighted by a Cauchy loss on the angle.

    Returns ``(R_mean, weights)`` with the final per-rotation weights in [0, 1].
    """
    N = len(Rs)
    w0 = np.ones(N) if w is None else np.asarray(w, dtype=np.float64)
    from geo4d.fusion.lie import project_to_rotation

    R = project_to_rotation((w0[:, None, None] * Rs).sum(0))
    # Start from the rotation with the smallest summed distance to the others (medoid): immune to a
    # minority of outliers, which the chordal mean is not.
    if N > 2:
        ang = np.linalg.norm(so3_log(np.einsum("aji,bjk->abik", Rs, Rs).reshape(-1, 3, 3)), axis=-1).reshape(N, N)
        R = Rs[int(np.argmin((w0[None, :] * ang).sum(1)))]
    rw = w0.copy()
    for _ in range(iterations):
        a = np.linalg.norm(so3_log(np.einsum("ji,njk->nik", R, Rs)), axis=-1)
        scale = max(robust_sigma(a), np.radians(0.05))
        rw = w0 / (1.0 + (a / (3.0 * scale)) ** 2)
        R = project_to_rotation((rw[:, None, None] * Rs).sum(0))
    return R, rw / np.maximum(w0, 1e-300)


def chain_init(pairs: PairData, starts: np.ndarray, n_frames: int) -> tuple[State, np.ndarray]:
    """Place the windows one after the other (in order of their start) on the frames placed so far.

    Window 0 defines the world (``S_0 = I``). For a later window: rotation = robust mean of
    ``R_i R^pm_qᵀ`` over its already-placed frames; log scale = weighted median of ``L_ip − log z_qp``
    over their sampled pixels (``L`` the running fused log depth); translation = weighted mean of
    ``c_i − s Q c^pm_q``. Frames seen for the first time get ``S_g ∘ (R^pm_q, c^pm_q)``.

    Returns:
        (state, placed) where ``placed`` (T,) is False for frames no valid pair reached.
    """
    G = len(starts)
    T = n_frames
    R = np.tile(np.eye(3), (T, 1, 1))
    c = np.zeros((T, 3))
    Q = np.tile(np.eye(3), (G, 1, 1))
    t = np.zeros((G, 3))
    logs = np.zeros(G)
    placed = np.zeros(T, bool)
    n = pairs.logz.shape[1]
    Lsum = np.zeros((T, n))
    Lw = np.zeros((T, n))
    order = np.argsort(starts, kind="stable")
    by_window = [np.flatnonzero((pairs.g == g) & pairs.pm_ok) for g in range(G)]
    first = True
    for g in order:
        qs = by_window[g]
        if len(qs) == 0:
            continue
        fi = pairs.i[qs]
        old = placed[fi]
        if first:
            # The world is the camera of the first window's first frame.
            q0 = qs[np.argmin(pairs.k[qs])]
            Qg = pairs.R_pm[q0].T
            sg = 1.0
            tg = -Qg @ pairs.c_pm[q0]
            first = False
        elif not old.any():
            # No overlap with what is placed (should not happen for covering windows): continue the
            # trajectory from the last placed frame with unit relative scale.
            last = int(np.flatnonzero(placed).max())
            q0 = qs[np.argmin(pairs.k[qs])]
            Qg = R[last] @ pairs.R_pm[q0].T
            sg = 1.0
            tg = c[last] - Qg @ pairs.c_pm[q0]
        else:
            qo = qs[old]
            Qg, _ = robust_rotation_mean(np.einsum("nij,nkj->nik", R[pairs.i[qo]], pairs.R_pm[qo]))
            # Scale from depths of shared pixels.
            Li = Lsum[pairs.i[qo]] / np.maximum(Lw[pairs.i[qo]], 1e-300)
            m = (Lw[pairs.i[qo]] > 0) & (pairs.wz[qo] > 0)
            if m.sum() >= 3:
                wm = (pairs.wz[qo] * Lw[pairs.i[qo]])[m]
                sg = float(np.exp(weighted_median((Li - pairs.logz[qo])[m], wm)))
            else:
                sg = 1.0
            tc = c[pairs.i[qo]] - sg * np.einsum("ij,nj->ni", Qg, pairs.c_pm[qo])
            tg = np.median(tc, axis=0)
        Q[g], t[g], logs[g] = Qg, tg, np.log(sg)
        new = qs[~old]
        R[pairs.i[new]] = np.einsum("ij,njk->nik", Qg, pairs.R_pm[new])
        c[pairs.i[new]] = sg * np.einsum("ij,nj->ni", Qg, pairs.c_pm[new]) + tg
        placed[pairs.i[new]] = True
        wz = pairs.wz[qs]
        Lsum[fi] += wz * (pairs.logz[qs] + np.log(sg))
        Lw[fi] += wz
    # World = camera of frame 0: re-express everything relative to it.
    R0, c0 = R[0].copy(), c[0].copy()
    R = np.einsum("ji,njk->nik", R0, R)
    c = np.einsum("ji,nj->ni", R0, c - c0)
    Q = np.einsum("ji,njk->nik", R0, Q)
    t = np.einsum("ji,nj->ni", R0, t - c0)
    state = State(R, c, Q, t, logs, np.zeros(G))
    return state, placed


def init_ray_scales(state: State, pairs: PairData) -> None:
    """``ρ_g`` by least squares of ``c_i − t_g ≈ ρ Q_g c^ray_q`` over the window's pairs (in place)."""
    if pairs.c_ray is None:
        return
    G = len(state.logs)
    for g in range(G):
        m = (pairs.g == g) & pairs.ray_ok
        if not m.any():
            continue
        a = np.einsum("ij,nj->ni", state.Q[g], pairs.c_ray[m])
        b = state.c[pairs.i[m]] - state.t[g]
        den = (a * a).sum()
        num = (a * b).sum()
        if den > 0 and num > 0:
            state.logrho[g] = np.log(num / den)
        else:
            state.logrho[g] = state.logs[g]


# ---------------------------------------------------------------------------------------------
# Residual blocks
# ---------------------------------------------------------------------------------------------
@dataclass
class _Block:
    r: np.ndarray  # (B, m)
    w: np.ndarray  # (B,)
    terms: list = field(default_factory=list)  # [(cols (B,p) int, J (B,m,p))]


class _Layout:
    """Column indices of the parameters in the LM increment vector."""

    def __init__(self, T: int, G: int, rays: bool):
        self.T, self.G, self.rays = T, G, rays
        self.pose = np.full(T, -1)
        self.pose[1:] = 6 * np.arange(T - 1)
        base = 6 * (T - 1)
        self.wsize = 8 if rays else 7
        self.win = base + self.wsize * np.arange(G)
        self.n = base + self.wsize * G

    def pose_cols(self, i: np.ndarray, part: int) -> np.ndarray:
        """part 0: rotation increment (3), part 1: centre increment (3)."""
        b = self.pose[i]
        cols = b[:, None] + 3 * part + np.arange(3)[None]
        return np.where(b[:, None] >= 0, cols, -1)

    def win_cols(self, g: np.ndarray, offs) -> np.ndarray:
        """Columns of window parameters ``offs`` (0–2 rotation, 3–5 translation, 6 log s, 7 log ρ); -1 = fixed."""
        cols = self.win[g][:, None] + np.asarray(offs)[None]
        if 6 in offs:
            j = list(offs).index(6)
            cols[:, j] = np.where(g == 0, -1, cols[:, j])  # s_0 fixed (scale gauge)
        return cols


def _pose_blocks(state: State, pairs: PairData, lay: _Layout, modality: str, sd: _SceneDepth,
                 w_rot: np.ndarray, w_c: np.ndarray) -> tuple[_Block, _Block, np.ndarray, np.ndarray]:
    """Rotation and centre residual blocks of one camera modality (``"pm"`` point map, ``"ray"``).

    For every usable pair: ``r_rot = log(R_iᵀ Q_g R_q)`` (3) and ``r_c = (c_i − k_g Q_g c_q − t_g) / d_i`` (3)
    with ``k_g`` the window's point-map (``s_g``) or ray (``ρ_g``) scale, with their Jacobians. Returns
    ``(rot block, centre block, r_rot (m,3), r_c (m,3))`` over the modality's valid pairs.
    """
    if modality == "pm":
        m = pairs.pm_ok
        Rm, cm, logk, koff = pairs.R_pm[m], pairs.c_pm[m], state.logs, 6
    else:
        m = pairs.ray_ok
        Rm, cm, logk, koff = pairs.R_ray[m], pairs.c_ray[m], state.logrho, 7
    pi, pg = pairs.i[m], pairs.g[m]
    Ri, ci, Qg, tg = state.R[pi], state.c[pi], state.Q[pg], state.t[pg]
    E = np.einsum("nji,njk,nkl->nil", Ri, Qg, Rm)
    r_rot = so3_log(E)
    Jl = inv_left_jacobian(r_rot)
    rot = _Block(r_rot, w_rot[m], [
        (lay.pose_cols(pi, 0), -Jl),
        (lay.win_cols(pg, [0, 1, 2]), np.einsum("nij,nkj->nik", Jl, Ri)),
    ])
    k = np.exp(logk[pg])
    Bv = k[:, None] * np.einsum("nij,nj->ni", Qg, cm)
    d = sd.value(state.logs)
    di = d[pi][:, None]
    r_c = (ci - Bv - tg) / di
    eye = np.broadcast_to(np.eye(3), (len(pi), 3, 3))
    cen = _Block(r_c, w_c[m], [
        (lay.pose_cols(pi, 1), eye / di[..., None]),
        (lay.win_cols(pg, [0, 1, 2]), skew(Bv) / di[..., None]),
        (lay.win_cols(pg, [3, 4, 5]), -eye / di[..., None]),
        (lay.win_cols(pg, [koff]), (-Bv / di)[..., None]),
        sd.jac_terms(lay, pi, r_c),
    ])
    return rot, cen, r_rot, r_c


def _per_row(w: float | np.ndarray, i: np.ndarray) -> np.ndarray:
    """A smoothness weight per row ``i``: a scalar broadcast, or a per-frame (T,) weight indexed."""
    w = np.asarray(w, dtype=np.float64)
    return np.full(len(i), float(w)) if w.ndim == 0 else w[i]


def _smooth_blocks(state: State, lay: _Layout, sd: _SceneDepth, w_rot, w_tr) -> list[_Block]:
    """Second-difference blocks of the trajectory: rotation ``log(R_iᵀR_{i+1}) − log(R_{i−1}ᵀR_i)`` and
    centre ``(c_{i+1} − 2c_i + c_{i−1}) / d_i`` for i = 1…T−2 (none when T < 3).
    """
    T = lay.T
    if T < 3:
        return []
    i = np.arange(1, T - 1)
    Da = so3_log(np.einsum("nji,njk->nik", state.R[i - 1], state.R[i]))
    Db = so3_log(np.einsum("nji,njk->nik", state.R[i], state.R[i + 1]))
    r = Db - Da
    rot = _Block(r, _per_row(w_rot, i), [
        (lay.pose_cols(i + 1, 0), inv_right_jacobian(Db)),
        (lay.pose_cols(i, 0), -inv_left_jacobian(Db) - inv_right_jacobian(Da)),
        (lay.pose_cols(i - 1, 0), inv_left_jacobian(Da)),
    ])
    di = sd.value(state.logs)[i][:, None]
    rt = (state.c[i + 1] - 2 * state.c[i] + state.c[i - 1]) / di
    eye = np.broadcast_to(np.eye(3), (len(i), 3, 3)) / di[..., None]
    tr = _Block(rt, _per_row(w_tr, i), [
        (lay.pose_cols(i + 1, 1), eye),
        (lay.pose_cols(i, 1), -2 * eye),
        (lay.pose_cols(i - 1, 1), eye),
        sd.jac_terms(lay, i, rt),
    ])
    return [rot, tr]


class _DepthTerm:
    """Per-pixel log-depth agreement between the windows that see a frame, fused depth eliminated.

    For frame i, pixel p and covering pairs c = 1…C with weights w̃ and log depths l: the cost
    ``½ Σ_c w̃_c (σ_c + l_c − L*)²`` with ``L*`` the weighted mean is exactly quadratic in the window
    log scales ``σ``: ``½ σᵀHσ + bᵀσ + ½κ`` with ``H = Σ_p diag(w̃) − w̃w̃ᵀ/W``.
    """

    def __init__(self, pairs: PairData, n_frames: int, pair_w: np.ndarray, scale: float):
        T = n_frames
        q_ok = np.flatnonzero(pairs.pm_ok)
        counts = np.bincount(pairs.i[q_ok], minlength=T)
        C = max(1, int(counts.max()) if len(q_ok) else 1)
        cover = np.full((T, C), -1)
        fill = np.zeros(T, int)
        for q in q_ok:
            i = pairs.i[q]
            cover[i, fill[i]] = q
            fill[i] += 1
        self.cover = cover
        valid = cover >= 0
        qq = np.where(valid, cover, 0)
        wz = pairs.wz[qq] * valid[..., None]  # (T,C,n)
        norm = wz.sum(-1, keepdims=True)
        wt = np.where(norm > 0, wz / np.maximum(norm, 1e-300), 0.0) * (pair_w[qq] * valid)[..., None] * scale
        l = np.where(wt > 0, pairs.logz[qq], 0.0)
        W = wt.sum(1)  # (T,n)
        Wi = np.where(W > 0, 1.0 / np.maximum(W, 1e-300), 0.0)
        self.H = np.einsum("tcn->tc", wt)[..., None] * np.eye(C)[None] - np.einsum("tan,tbn,tn->tab", wt, wt, Wi)
        wl = wt * l
        self.b = wl.sum(-1) - np.einsum("tcn,tn->tc", wt, (wl.sum(1) * Wi))
        self.g = np.where(valid, pairs.g[qq], 0)
        self.valid = valid
        self.wt, self.l, self.Wi = wt, l, Wi

    def sigma(self, logs: np.ndarray) -> np.ndarray:
        return np.where(self.valid, logs[self.g], 0.0)

    def cost(self, logs: np.ndarray) -> float:
        # From the deviations (not ½σᵀHσ + bᵀσ + ½κ, which cancels catastrophically near the optimum).
        dev, wt = self.deviations(logs)
        return float(0.5 * (wt * dev**2).sum())

    def deviations(self, logs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per (frame, cover slot, pixel) deviation ``σ + l − L*`` and the weights used."""
        s = self.sigma(logs)
        v = s[..., None] + self.l
        L = (self.wt * v).sum(1) * self.Wi
        return np.where(self.wt > 0, v - L[:, None, :], 0.0), self.wt

    def add_to(self, lay: _Layout, logs: np.ndarray, rows: list, cols: list, vals: list, grad: np.ndarray) -> None:
        """Add the depth term's exact Hessian ``H`` (T,C,C) and gradient ``Hσ + b`` to the normal equations."""
        s = self.sigma(logs)
        gcol = lay.win[self.g] + 6
        gcol = np.where(self.valid & (self.g != 0), gcol, -1)
        rows.append(np.broadcast_to(gcol[:, :, None], self.H.shape))
        cols.append(np.broadcast_to(gcol[:, None, :], self.H.shape))
        vals.append(self.H)
        gv = np.einsum("tab,tb->ta", self.H, s) + self.b
        ok = gcol >= 0
        np.add.at(grad, gcol[ok], gv[ok])


# ---------------------------------------------------------------------------------------------
# Levenberg-Marquardt
# ---------------------------------------------------------------------------------------------
def _assemble(blocks: list[_Block], lay: _Layout, depth: _DepthTerm | None, logs: np.ndarray):
    """Sparse Gauss-Newton normal matrix ``H = Σ w JᵀJ`` (n×n CSC) and gradient ``Σ w Jᵀr`` (n,) of the
    blocks and the depth term; fixed parameters (column -1) are dropped.
    """
    rows, cols, vals = [], [], []
    grad = np.zeros(lay.n)
    for blk in blocks:
        w = blk.w
        for ia, Ja in blk.terms:
            ga = np.einsum("b,bmp,bm->bp", w, Ja, blk.r)
            ok = ia >= 0
            np.add.at(grad, ia[ok], ga[ok])
            for ib, Jb in blk.terms:
                Hab = np.einsum("b,bmp,bmq->bpq", w, Ja, Jb)
                rows.append(np.broadcast_to(ia[:, :, None], Hab.shape))
                cols.append(np.broadcast_to(ib[:, None, :], Hab.shape))
                vals.append(Hab)
    if depth is not None:
        depth.add_to(lay, logs, rows, cols, vals, grad)
    r = np.concatenate([x.reshape(-1) for x in rows])
    c = np.concatenate([x.reshape(-1) for x in cols])
    v = np.concatenate([x.reshape(-1) for x in vals])
    ok = (r >= 0) & (c >= 0)
    H = sp.coo_matrix((v[ok], (r[ok], c[ok])), shape=(lay.n, lay.n)).tocsc()
    return H, grad


def _apply(state: State, delta: np.ndarray, lay: _Layout) -> State:
    """The state moved by the increment ``delta`` (n,): poses ``R ← R exp(ω)``, ``c ← c + δc`` (frame 0
    fixed); windows ``Q ← exp(ω) Q``, ``t ← t + δt``, log scales (``s_0`` fixed).
    """
    s = state.copy()
    T, G = lay.T, lay.G
    if T > 1:
        dp = delta[: 6 * (T - 1)].reshape(T - 1, 6)
        s.R[1:] = state.R[1:] @ so3_exp(dp[:, 0:3])
        s.c[1:] = state.c[1:] + dp[:, 3:6]
    dw = delta[6 * (T - 1):].reshape(G, lay.wsize)
    s.Q = so3_exp(dw[:, 0:3]) @ state.Q
    s.t = state.t + dw[:, 3:6]
    s.logs = state.logs + np.where(np.arange(G) == 0, 0.0, dw[:, 6])
    if lay.rays:
        s.logrho = state.logrho + dw[:, 7]
    return s


@dataclass
class Weights:
    """Weights of the residual blocks for one robust round."""

    pm_rot: np.ndarray  # (P,)
    pm_c: np.ndarray
    ray_rot: np.ndarray
    ray_c: np.ndarray
    smooth_rot: float | np.ndarray  # scalar, or (T,) per frame
    smooth_tr: float | np.ndarray
    depth: _DepthTerm | None


def _blocks(state: State, pairs: PairData, lay: _Layout, d: _SceneDepth, W: Weights, alphas: dict) -> list[_Block]:
    """Residual blocks of the enabled terms (point-map and ray cameras, smoothness) at ``state``."""
    out: list[_Block] = []
    if alphas["pointmap"] > 0:
        rot, cen, _, _ = _pose_blocks(state, pairs, lay, "pm", d, W.pm_rot, W.pm_c)
        out += [rot, cen]
    if alphas["rays"] > 0 and pairs.R_ray is not None:
        rot, cen, _, _ = _pose_blocks(state, pairs, lay, "ray", d, W.ray_rot, W.ray_c)
        out += [rot, cen]
    if alphas["smooth"] > 0:
        out += _smooth_blocks(state, lay, d, W.smooth_rot, W.smooth_tr)
    return out


def _cost(blocks: list[_Block], depth: _DepthTerm | None, logs: np.ndarray) -> float:
    """Total cost ``½ Σ w r²`` of the blocks plus the depth term's."""
    c = sum(0.5 * float((b.w[:, None] * b.r**2).sum()) for b in blocks)
    if depth is not None:
        c += depth.cost(logs)
    return c


def levenberg_marquardt(state: State, pairs: PairData, lay: _Layout, d: _SceneDepth, W: Weights, alphas: dict,
                        iterations: int) -> tuple[State, dict]:
    """Minimise the weighted cost over poses and window similarities; returns (state, info)."""
    blocks = _blocks(state, pairs, lay, d, W, alphas)
    cost = _cost(blocks, W.depth, state.logs)
    cost0 = cost
    lam = 1e-6
    it = 0
    for it in range(1, iterations + 1):
        H, g = _assemble(blocks, lay, W.depth, state.logs)
        diag = H.diagonal()
        reg = sp.diags(lam * np.maximum(diag, 1e-12 * max(diag.max(), 1e-300)) + 1e-12)
        improved = False
        for _ in range(8):
            try:
                # Symmetric Jacobi scaling: the weights span many orders of magnitude.
                A = (H + reg).tocsc()
                dsc = 1.0 / np.sqrt(np.maximum(A.diagonal(), 1e-300))
                Dm = sp.diags(dsc)
                delta = -dsc * spsolve((Dm @ A @ Dm).tocsc(), dsc * g)
            except Exception:  # pragma: no cover - singular even with damping
                delta = np.full(lay.n, np.nan)
            if not np.all(np.isfinite(delta)):
                lam *= 10.0
                reg = sp.diags(lam * np.maximum(diag, 1e-12 * max(diag.max(), 1e-300)) + 1e-12)
                continue
            cand = _apply(state, delta, lay)
            cblocks = _blocks(cand, pairs, lay, d, W, alphas)
            ccost = _cost(cblocks, W.depth, cand.logs)
            if ccost <= cost:
                rel = (cost - ccost) / max(cost, 1e-300)
                state, blocks, cost = cand, cblocks, ccost
                lam = max(lam * 0.2, 1e-12)
                improved = True
                break
            lam *= 10.0
            reg = sp.diags(lam * np.maximum(diag, 1e-12 * max(diag.max(), 1e-300)) + 1e-12)
        if not improved or rel < 1e-5 or float(np.abs(delta).max()) < 1e-12:
            break
    return state, {"iterations": it, "cost_initial": cost0, "cost_final": cost}


# ---------------------------------------------------------------------------------------------
# Robust rounds
# ---------------------------------------------------------------------------------------------
def _robust_sigma(x: np.ndarray, floor: float) -> float:
    """σ̂ of the finite values of ``x``, at least ``floor`` (``floor`` when there are none)."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return floor
    return max(robust_sigma(x), floor)


class _SceneDepth:
    """``d_i``, the typical depth of frame ``i`` in world units, as a function of the window scales.

    ``log d_i = Σ_c ω_ic (log s_g(ic) + m_ic)`` with ``m`` the median log depth of pair ``ic`` in its
    window's units and ``ω`` the pairs' weights normalised per frame. Translations divided by ``d_i``
    are then scale-free: shrinking a stretch of the video (its windows' scales with its cameras) does
    not change them, so no term can lower its cost by drifting the scale.
    """

    def __init__(self, pairs: PairData, n_frames: int, pair_w: np.ndarray):
        T = n_frames
        q_ok = np.flatnonzero(pairs.pm_ok)
        counts = np.bincount(pairs.i[q_ok], minlength=T)
        C = max(1, int(counts.max()) if len(q_ok) else 1)
        cover = np.full((T, C), -1)
        fill = np.zeros(T, int)
        for q in q_ok:
            i = pairs.i[q]
            cover[i, fill[i]] = q
            fill[i] += 1
        valid = cover >= 0
        qq = np.where(valid, cover, 0)
        with np.errstate(all="ignore"):
            med = np.nanmedian(np.where(pairs.wz > 0, pairs.logz, np.nan), axis=1)
        med = np.where(np.isfinite(med), med, 0.0)
        self.m = np.where(valid, med[qq], 0.0)
        w = np.where(valid, pair_w[qq], 0.0)
        w = np.where(w.sum(1, keepdims=True) > 1e-6, w, valid.astype(float))  # all down-weighted: plain mean
        self.w = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
        self.g = np.where(valid, pairs.g[qq], 0)
        self.valid = valid

    def value(self, logs: np.ndarray) -> np.ndarray:
        return np.exp((self.w * (logs[self.g] + self.m)).sum(1))

    def jac_terms(self, lay: _Layout, i: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Columns and Jacobian (B, m, C) of residuals ``r = v / d_i`` (B, m) w.r.t. the log scales."""
        cols = np.where(self.valid[i] & (self.g[i] != 0), lay.win[self.g[i]] + 6, -1)
        return cols, -r[:, :, None] * self.w[i][:, None, :]


#: σ̂ of a 3-vector residual's norm (1.4826 · median ‖r‖) per unit of its per-axis σ: the median of
#: ‖r‖ for r ~ N(0, σ² I₃) is σ √(χ²₃ median) = 1.5382 σ.
_NORM_TO_AXIS = MAD_TO_SIGMA * float(np.sqrt(chi2.ppf(0.5, 3)))
_LOCAL_HALF = 2  # frames each side over which a frame's acceleration level is averaged
#: σ_i² = this × the local mean square: one constant of the method (not per video), set once on the
#: synthetic fast-turn benchmark (1/2: RPE-R 0.78–1.04× the best fixed scale per seed; 1: 0.95–1.24×)
_LEVEL_SHRINK = 0.5


def _scale_info(sm_rot, sm_tr, auto: bool) -> dict:
    """The smoothness scales for the diagnostics: median and largest over the frames (degrees/frame²
    and fraction of the scene depth), and how they were chosen."""
    r, t = np.degrees(np.atleast_1d(sm_rot)), np.atleast_1d(sm_tr)
    return {"rot_deg": float(np.median(r)), "rot_deg_max": float(r.max()), "trans": float(np.median(t)),
            "trans_max": float(t.max()), "chosen": "per frame, from the data" if auto else "fixed"}


def _smoothness_scales(state: State, d: np.ndarray, floor_rot: float, floor_tr: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame, per-axis scales (T,) of the smoothness prior from the trajectory the last round fitted.

    An EM-style update of the prior's variance frame by frame: ``σ_i² = max(floor², ē_i / 2)`` with
    ``ē_i`` the mean over frames i−2 … i+2 of ``‖a_j‖² / 3``, ``a_j`` the current second difference
    (rotation: ``log(R_jᵀR_{j+1}) − log(R_{j−1}ᵀR_j)``; centre: ``(c_{j+1} − 2c_j + c_{j−1}) / d_j``).
    Where the windows agree on a real acceleration (a turn every window sees) the fit keeps it and
    the prior widens there; independent per-window noise is averaged out by the fit and by the floor,
    so a smooth stretch stays smoothed at the floor. ``d`` (T,): scene depth.
    """
    T = len(state.R)
    i = np.arange(1, T - 1)
    Da = so3_log(np.einsum("nji,njk->nik", state.R[i - 1], state.R[i]))
    Db = so3_log(np.einsum("nji,njk->nik", state.R[i], state.R[i + 1]))
    e_rot = np.zeros(T)
    e_rot[i] = ((Db - Da) ** 2).sum(1) / 3.0
    e_tr = np.zeros(T)
    e_tr[i] = (((state.c[i + 1] - 2 * state.c[i] + state.c[i - 1]) / d[i][:, None]) ** 2).sum(1) / 3.0
    kern = np.ones(2 * _LOCAL_HALF + 1)

    def local_mean(x: np.ndarray) -> np.ndarray:  # over the frames i−2 … i+2 that have a second difference
        num = np.convolve(x, kern)[_LOCAL_HALF : _LOCAL_HALF + T]
        den = np.convolve((np.arange(T) >= 1) & (np.arange(T) <= T - 2), kern)[_LOCAL_HALF : _LOCAL_HALF + T]
        return num / np.maximum(den, 1)

    return (np.sqrt(np.maximum(_LEVEL_SHRINK * local_mean(e_rot), floor_rot**2)),
            np.sqrt(np.maximum(_LEVEL_SHRINK * local_mean(e_tr), floor_tr**2)))


def _anchor_jump(state: State, sm_rot: float) -> bool:
    """True when frame 0 breaks the trajectory's continuity (an outlier no other window can out-vote).

    Frame 0 is seen by the first window only, and it is the gauge (fixed at the identity), so an
    error in the first window's frame-0 camera relative to its other frames shows nowhere in the
    data — only as a jump of the angular velocity between frames 0–1 and 1–2. It counts as an
    outlier when that change exceeds 20× both the smoothness scale and the trajectory's median
    change.
    """
    R = state.R
    T = len(R)
    i = np.arange(1, T - 1)
    Da = so3_log(np.einsum("nji,njk->nik", R[i - 1], R[i]))
    Db = so3_log(np.einsum("nji,njk->nik", R[i], R[i + 1]))
    a = np.linalg.norm(Db - Da, axis=-1)
    typical = max(sm_rot, float(np.median(a[1:])) if len(a) > 1 else 0.0)
    return bool(a[0] > 20.0 * typical)


def refine(state: State, pairs: PairData, n_frames: int, *, alphas: dict, smooth_rot: float, smooth_trans: float,
           robust_scale: float, iterations: int, rounds: int, smooth_auto: bool = True,
           consensus: bool = True) -> tuple[State, dict]:
    """Consensus start, then robust rounds of: noise levels and pair weights from the residuals, the
    smoothness scales, then LM.

    Args:
        smooth_rot, smooth_trans: per-axis smoothness scales (rad/frame², relative centre change);
            with ``smooth_auto`` the floors of the per-frame scales (:func:`_smoothness_scales`),
            else the scales used.
        consensus: start from :func:`geo4d.fusion.consensus.consensus_init` (its pair weights
            choose the pairs the first noise levels are measured on).

    Returns ``(state, info)`` with per-pair weights ``pm_weight``/``ray_weight`` (P,), the noise
    levels, the smoothness scales, iteration counts and costs.
    """
    T, G = n_frames, len(state.logs)
    rays = alphas["rays"] > 0 and pairs.R_ray is not None
    lay = _Layout(T, G, rays)
    pm_w, ray_w = pairs.pm_ok.astype(float), np.ones(pairs.n_pairs)
    info: dict = {"rounds": [], "iterations": 0, "frame0_outlier": False}
    if consensus:
        state, pm_w = consensus_init(state, pairs, T)
        init_ray_scales(state, pairs)
        ray_w = pm_w.copy()
        info["consensus_weight"] = pm_w
    anchor_outlier = False
    sm_rot, sm_tr = smooth_rot, smooth_trans
    for rnd in range(rounds):
        d = _SceneDepth(pairs, T, pm_w)
        sig, pm_w, ray_w = _noise_and_weights(state, pairs, lay, d, T, pm_w, ray_w, rnd, rays, robust_scale)
        if anchor_outlier:
            pm_w = np.where(pairs.i == 0, 0.0, pm_w)
            ray_w = np.where(pairs.i == 0, 0.0, ray_w)
        d = _SceneDepth(pairs, T, pm_w)
        if smooth_auto and rnd > 0 and alphas["smooth"] > 0:
            sm_rot, sm_tr = _smoothness_scales(state, d.value(state.logs), smooth_rot, smooth_trans)
        info["smooth_scale"] = _scale_info(sm_rot, sm_tr, smooth_auto)
        W = _term_weights(pairs, T, alphas, sig, pm_w, ray_w, sm_rot, sm_tr, rays)
        state, li = levenberg_marquardt(state, pairs, lay, d, W, alphas, iterations)
        info["iterations"] += li["iterations"]
        info["rounds"].append({"sigma": {k: float(v) for k, v in sig.items()}, **li})
        if rnd == 0 and alphas["smooth"] > 0 and rounds > 1 and T >= 4:
            anchor_outlier = _anchor_jump(state, float(np.median(sm_rot)))
            if anchor_outlier:
                info["frame0_outlier"] = True
    info["pm_weight"] = pm_w
    info["ray_weight"] = ray_w
    info["scene_depth"] = _SceneDepth(pairs, T, pm_w).value(state.logs)
    return state, info


def _noise_and_weights(state: State, pairs: PairData, lay: _Layout, d: _SceneDepth, T: int, pm_w: np.ndarray,
                       ray_w: np.ndarray, rnd: int, rays: bool, robust_scale: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """Noise levels σ̂ of each term at the current state, then Cauchy weights per pair.

    After the first round, σ̂ is measured on the pairs the previous round kept (weight > 0.5).
    Returns ``(sigmas, pm_weight (P,), ray_weight (P,))``.
    """
    sig: dict = {}
    m = pairs.pm_ok
    e_rot, e_c, sig["pm_rot"], sig["pm_c"] = _pose_noise(state, pairs, lay, "pm", d, pm_w[m] > 0.5)
    pair_dev, sig["depth"] = _depth_noise(state, pairs, T, pm_w)
    e2 = np.zeros(pairs.n_pairs)
    e2[m] = (e_rot / sig["pm_rot"]) ** 2 + (e_c / sig["pm_c"]) ** 2
    e2 += (pair_dev / sig["depth"]) ** 2
    pm_w = _cauchy_weights(e2, m, robust_scale)
    if not rays:
        return sig, pm_w, np.zeros(pairs.n_pairs)
    mr = pairs.ray_ok
    er, ec, sig["ray_rot"], sig["ray_c"] = _pose_noise(state, pairs, lay, "ray", d, ray_w[mr] > 0.5)
    e2r = np.zeros(pairs.n_pairs)
    e2r[mr] = (er / sig["ray_rot"]) ** 2 + (ec / sig["ray_c"]) ** 2
    return sig, pm_w, _cauchy_weights(e2r, mr, robust_scale)


def _cauchy_weights(e2: np.ndarray, ok: np.ndarray, robust_scale: float) -> np.ndarray:
    """``1 / (1 + e² / c²)`` per pair (``e²`` the squared normalised residual), 0 where not ``ok``."""
    return np.where(ok, 1.0 / (1.0 + e2 / robust_scale**2), 0.0)


def _pose_noise(state: State, pairs: PairData, lay: _Layout, kind: str, d: _SceneDepth,
                keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Rotation and centre residual norms of the ``kind`` ("pm"/"ray") camera term, and their σ̂
    over the ``keep`` pairs (None: all)."""
    ones = np.ones(pairs.n_pairs)
    _, _, rr, rc = _pose_blocks(state, pairs, lay, kind, d, ones, ones)
    e_rot, e_c = np.linalg.norm(rr, axis=-1), np.linalg.norm(rc, axis=-1)
    sel = keep if keep is not None and keep.sum() >= 3 else slice(None)
    return e_rot, e_c, _robust_sigma(e_rot[sel], _ROT_FLOOR), _robust_sigma(e_c[sel], _CENTRE_FLOOR)


def _depth_noise(state: State, pairs: PairData, T: int, prev_w: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Each pair's (signed) mean log-depth deviation from the fused depth — what the window scales
    can change — and σ̂ of it over frames seen by ≥ 2 windows (pairs of weight > 0.5 in ``prev_w``)."""
    P = pairs.n_pairs
    dt = _DepthTerm(pairs, T, np.ones(P), 1.0)
    dev, wt = dt.deviations(state.logs)
    qq = dt.cover
    ok = qq >= 0
    multi = ((wt > 0).any(-1)).sum(1) >= 2  # frames seen by ≥ 2 windows
    wsum = wt.sum(-1)
    mdev = np.where(wsum > 0, (wt * dev).sum(-1) / np.maximum(wsum, 1e-300), 0.0)
    pair_dev = np.zeros(P)
    pair_dev[qq[ok]] = mdev[ok]
    sel = ok & multi[:, None]
    if prev_w is not None:
        sel &= prev_w[np.where(ok, qq, 0)] > 0.5
    return pair_dev, _robust_sigma(mdev[sel], _DEPTH_FLOOR)


def _term_weights(pairs: PairData, T: int, alphas: dict, sig: dict, pm_w: np.ndarray, ray_w: np.ndarray,
                  sm_rot: float, sm_tr: float, rays: bool) -> Weights:
    """LM weights of every term, per residual component: ``α · pair weight / σ²`` with σ the per-axis
    noise level (σ̂ of a camera term's residual norms ÷ ``_NORM_TO_AXIS``; the smoothness scales are
    per axis already)."""
    P = pairs.n_pairs
    a_pm, a_ray, a_sm = alphas["pointmap"], alphas["rays"], alphas["smooth"]

    def inv_var(key: str) -> float:
        return (_NORM_TO_AXIS / sig[key]) ** 2

    return Weights(
        pm_rot=a_pm * pm_w * inv_var("pm_rot"),
        pm_c=a_pm * pm_w * inv_var("pm_c"),
        ray_rot=(a_ray * ray_w * inv_var("ray_rot")) if rays else np.zeros(P),
        ray_c=(a_ray * ray_w * inv_var("ray_c")) if rays else np.zeros(P),
        smooth_rot=a_sm / sm_rot**2,
        smooth_tr=a_sm / sm_tr**2,
        depth=_DepthTerm(pairs, T, pm_w, a_pm / sig["depth"] ** 2),
    )
