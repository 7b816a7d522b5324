"""``fuse``: overlapping window predictions → one consistent per-frame reconstruction.

Pipeline (each step is described with its math in docs/fusion.md):

1. **Per window, streamed** (one read of each window): reject NaN/inf; intrinsics (and the optional
   z offset) from the first point map; cameras from the Plücker maps; keep a regular sample of
   pixels (points, confidences, disparities) — a few hundred per frame.
2. **Closed-form cameras**: a shared focal length / principal point (robust median over windows and
   modalities); the camera of every (window, frame) pair in its window by PnP on the point map.
3. **Chaining**: windows placed one after another by robust rotation averaging, depth-ratio scale
   and centre translation on the frames they share with what is already placed.
4. **Global refinement**: robust Levenberg-Marquardt over frame poses and window similarities (+ ray
   scales) with the point-map, ray and smoothness terms (:mod:`geo4d.fusion.solver`).
5. **Disparity alignment**: per-window affine maps fitted robustly against the fused depth.
6. **Depth, streamed** (second read of each window): per pixel, a robust weighted mean of every
   window's depth (point map, and disparity) in log depth; points; the scale gauge.

Time and memory are linear in the number of frames: windows are read one at a time, the solver's
unknowns are 6 per frame and 8 per window with a banded sparse normal matrix, and the depth
buffers hold one window span.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from geo4d.cameras import intrinsics_matrix, pixel_grid
from geo4d.errors import InputError, PredictionError
from geo4d.fusion.config import FusionConfig, FusionResult
from geo4d.fusion.depth import DepthAccumulator, fit_disparity
from geo4d.fusion.solver import PairData, chain_init, init_ray_scales, refine
from geo4d.fusion.window_cameras import intrinsics_from_pointmap, plucker_cameras, pnp, sample_pixels

__all__ = ["fuse"]

Progress = Callable[[int, int, str], None]

_REQUIRED = {"pointmap": 3, "pointmap_conf": 0, "ray_dir": 3, "ray_moment": 3, "disparity": 0}


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in np.shape(a)) if not hasattr(a, "shape") else tuple(int(x) for x in a.shape)


def _check_layout(windows: Mapping[str, Any], starts: Sequence[int], n_frames: int, cfg: FusionConfig):
    need = ["pointmap", "pointmap_conf"]
    if cfg.alpha_rays > 0:
        need += ["ray_dir", "ray_moment"]
    if cfg.alpha_disparity > 0:
        need += ["disparity"]
    missing = [k for k in need if k not in windows]
    if missing:
        raise InputError(f"windows: missing array(s) {', '.join(missing)} (needed by the enabled fusion terms)")
    pm = _shape(windows["pointmap"])
    if len(pm) != 5 or pm[-1] != 3:
        raise InputError(f"windows/pointmap: expected shape (G, V, H, W, 3), got {pm}")
    G, V, H, W, _ = pm
    for name in need:
        extra = _REQUIRED[name]
        exp = (G, V, H, W) + ((extra,) if extra else ())
        got = _shape(windows[name])
        if got != exp:
            raise InputError(f"windows/{name}: expected shape {exp}, got {got}")
    T = int(n_frames)
    if T < 1:
        raise InputError(f"fusion: n_frames must be >= 1, got {n_frames!r}")
    st = np.asarray(list(starts), dtype=np.int64)
    if st.shape != (G,):
        raise InputError(f"windows: {G} windows but {len(st)} starts")
    bad = np.flatnonzero((st < 0) | (st + V > T))
    if len(bad):
        g = int(bad[0])
        raise InputError(f"windows: window {g} (start {int(st[g])}, {V} frames) lies outside the video's {T} frames")
    covered = np.zeros(T, bool)
    for s in st:
        covered[s : s + V] = True
    if not covered.all():
        gaps = np.flatnonzero(~covered)
        raise InputError(f"windows: frames {int(gaps[0])}…{int(gaps[-1])} are not covered by any window ({len(gaps)} frames)")
    return G, V, H, W, st


def _read(windows: Mapping[str, Any], name: str, g: int, start: int, V: int) -> np.ndarray:
    a = np.asarray(windows[name][g], dtype=np.float64)
    if not np.isfinite(a).all():
        bad = "NaN" if np.isnan(a).any() else "inf"
        raise PredictionError(f"windows/{name}: window {g} (frames {start}–{start + V - 1}) contains {bad}")
    return a


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def _wmedian(x: np.ndarray, w: np.ndarray) -> float:
    ok = np.isfinite(x) & (w > 0)
    if not ok.any():
        return float("nan")
    x, w = x[ok], w[ok]
    o = np.argsort(x)
    cw = np.cumsum(w[o])
    return float(x[o][np.searchsorted(cw, 0.5 * cw[-1])])


def fuse(
    windows: Mapping[str, Any],
    starts: Sequence[int],
    n_frames: int,
    config: FusionConfig | Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> FusionResult:
    """Fuse overlapping window predictions into per-frame depth, intrinsics, poses and world points.

    Args:
        windows: mapping with ``pointmap`` (G,V,H,W,3), ``pointmap_conf`` (G,V,H,W), ``ray_dir``,
            ``ray_moment`` (G,V,H,W,3) and ``disparity`` (G,V,H,W); values support ``arr[g]``
            (NumPy or Zarr arrays, any float dtype). Read one window at a time, twice.
        starts: first frame of each window (window g covers ``starts[g] … starts[g]+V−1``); every
            frame must be covered.
        n_frames: T.
        config: :class:`FusionConfig` (or a dict of its fields); default settings when None.
        progress: optional ``progress(done, total, message)``.

    Returns:
        :class:`FusionResult` (depth 0 / confidence 0 where invalid; ``world_from_cam[0] = I``; scale
        such that frame 0's median valid depth is 1).

    Raises:
        InputError: missing arrays, wrong shapes, windows outside the video or frames not covered.
        PredictionError: NaN/inf in an array, naming the array and the window.

    Example:
        >>> from geo4d.fusion import fuse
        >>> res = fuse(store_windows, starts, T)  # doctest: +SKIP
        >>> res.depth.shape, res.world_from_cam[0]  # doctest: +SKIP
    """
    if config is None:
        cfg = FusionConfig()
    elif isinstance(config, FusionConfig):
        cfg = config
    else:
        cfg = FusionConfig.from_dict(dict(config))
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    G, V, H, W, st = _check_layout(windows, starts, n_frames, cfg)
    T = int(n_frames)
    total_steps = 2 * G + 3
    step = 0

    def tick(msg: str) -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total_steps, msg)

    use_rays = cfg.alpha_rays > 0
    use_disp = cfg.alpha_disparity > 0
    flat, uv = sample_pixels(H, W, cfg.samples_per_frame)
    n = len(flat)
    grid = pixel_grid(H, W).reshape(-1, 2)
    pp_fixed = None if cfg.estimate_principal_point else ((W - 1) / 2.0, (H - 1) / 2.0)

    # ---- 1. per window ------------------------------------------------------------------------
    P_s = np.zeros((G, V, n, 3), np.float32)
    w_s = np.zeros((G, V, n), np.float32)
    d_s = np.zeros((G, V, n), np.float32) if use_disp else None
    dv_s = np.zeros((G, V, n), bool) if use_disp else None
    win_intr = np.full((G, 5), np.nan)  # f, cx, cy, delta, rms (point map, first frame)
    ray_R = np.tile(np.eye(3), (G, V, 1, 1)) if use_rays else None
    ray_c = np.zeros((G, V, 3)) if use_rays else None
    ray_intr = np.full((G, V, 3), np.nan) if use_rays else None
    ray_q = np.full((G, V, 2), np.nan) if use_rays else None
    for g in range(G):
        s0 = int(st[g])
        pm = _read(windows, "pointmap", g, s0, V).reshape(V, H * W, 3)
        conf = _read(windows, "pointmap_conf", g, s0, V).reshape(V, H * W)
        wfull = np.where(conf > 0, np.minimum(conf, cfg.conf_clip), 0.0)
        f0, cx0, cy0, delta, rms = intrinsics_from_pointmap(pm[0], grid, wfull[0], z_offset=cfg.pointmap_z_offset, pp=pp_fixed)
        win_intr[g] = (f0, cx0, cy0, delta, rms)
        Ps = pm[:, flat].copy()
        Ps[..., 2] += delta
        P_s[g] = Ps
        w_s[g] = wfull[:, flat]
        if use_disp:
            disp = _read(windows, "disparity", g, s0, V).reshape(V, H * W)[:, flat]
            ok = disp != 0
            if cfg.disparity_min is not None:
                ok &= disp > cfg.disparity_min
            d_s[g] = disp
            dv_s[g] = ok
        if use_rays:
            rd = _read(windows, "ray_dir", g, s0, V)
            rm = _read(windows, "ray_moment", g, s0, V)
            pc = plucker_cameras(rd, rm, pp_fixed, per_frame_intrinsics=not cfg.shared_focal)
            ray_R[g], ray_c[g] = pc.ref_from_cam_R, pc.centres
            ray_intr[g] = np.stack([pc.focal, pc.cx, pc.cy], -1)
            ray_q[g] = np.stack([pc.rot_rms, pc.centre_rms], -1)
        tick(f"window {g} (frames {s0}–{s0 + V - 1}): cameras")
    timings["windows_read_s"] = time.perf_counter() - t_start

    # ---- 2. intrinsics and per-pair cameras ----------------------------------------------------------
    t1 = time.perf_counter()
    fvals = [win_intr[:, 0]]
    fw = [np.full(G, cfg.alpha_pointmap)]
    cxs, cys = [win_intr[:, 1]], [win_intr[:, 2]]
    if use_rays:
        fvals.append(ray_intr[:, 0, 0])
        fw.append(np.full(G, cfg.alpha_rays))
        cxs.append(ray_intr[:, 0, 1])
        cys.append(ray_intr[:, 0, 2])
    fv, fwv = np.concatenate(fvals), np.concatenate(fw)
    ok_f = np.isfinite(fv) & (fv > 0)
    if not ok_f.any():
        raise PredictionError("windows/pointmap: no window has enough valid points to estimate the focal length")
    focal = _wmedian(fv, fwv * ok_f)
    if pp_fixed is None:
        cx = _wmedian(np.concatenate(cxs), fwv * ok_f)
        cy = _wmedian(np.concatenate(cys), fwv * ok_f)
    else:
        cx, cy = pp_fixed

    pg = np.repeat(np.arange(G), V)
    pk = np.tile(np.arange(V), G)
    pi = st[pg] + pk
    Pq = P_s.reshape(G * V, n, 3)  # float32; converted per chunk
    wq = w_s.reshape(G * V, n).astype(np.float64)
    R_pm = np.zeros((G * V, 3, 3))
    c_pm = np.zeros((G * V, 3))
    f_pm = np.full(G * V, focal)
    rms_pm = np.full(G * V, np.nan)
    logz = np.zeros((G * V, n))
    chunk = 128  # pairs per batched PnP (bounds its temporary arrays)
    pnp_iters = 0
    for a in range(0, G * V, chunk):
        b = min(G * V, a + chunk)
        out = pnp(Pq[a:b].astype(np.float64), uv, wq[a:b], np.full(b - a, focal), cx, cy,
                  estimate_focal=not cfg.shared_focal)
        R_pm[a:b], c_pm[a:b], f_pm[a:b], rms_pm[a:b] = out["R"], out["c"], out["focal"], out["rms"]
        pnp_iters = max(pnp_iters, out["iterations"])
        z = out["depth"]
        logz[a:b] = np.log(np.where(z > 0, z, 1.0))
        wq[a:b] = np.where(z > 0, wq[a:b], 0.0)
    pm_ok = np.isfinite(rms_pm) & ((wq > 0).sum(1) >= 6)
    wq[~pm_ok] = 0.0
    if cfg.shared_focal:
        focals = np.full(T, focal)
    else:
        focals = np.full(T, np.nan)
        for i in range(T):
            m = (pi == i) & pm_ok
            vals, ws = [f_pm[m]], [np.full(m.sum(), cfg.alpha_pointmap)]
            if use_rays:
                vals.append(ray_intr.reshape(G * V, 3)[pi == i, 0])
                ws.append(np.full((pi == i).sum(), cfg.alpha_rays))
            focals[i] = _wmedian(np.concatenate(vals), np.concatenate(ws))
        focals = np.where(np.isfinite(focals), focals, focal)
    pairs = PairData(
        g=pg, k=pk, i=pi, R_pm=R_pm, c_pm=c_pm, pm_ok=pm_ok, logz=logz, wz=wq,
        R_ray=ray_R.reshape(G * V, 3, 3) if use_rays else None,
        c_ray=ray_c.reshape(G * V, 3) if use_rays else None,
        ray_ok=(np.isfinite(ray_q.reshape(G * V, 2)).all(-1)) if use_rays else None,
    )
    timings["cameras_s"] = time.perf_counter() - t1
    timings["pnp_iterations"] = pnp_iters

    # ---- 3–4. chaining and global refinement --------------------------------------------------------
    t2 = time.perf_counter()
    state, placed = chain_init(pairs, st, T)
    if not placed.all():
        gaps = np.flatnonzero(~placed)
        hint = "" if cfg.pointmap_z_offset else " (if the point maps carry a z offset, set pointmap_z_offset)"
        raise PredictionError(
            f"windows/pointmap: frames {int(gaps[0])}…{int(gaps[-1])} have no window whose point map fits a "
            f"pinhole camera in front of it{hint}"
        )
    init_ray_scales(state, pairs)
    timings["chain_s"] = time.perf_counter() - t2
    tick("windows chained")
    t3 = time.perf_counter()
    alphas = {"pointmap": cfg.alpha_pointmap, "rays": cfg.alpha_rays, "smooth": cfg.alpha_smooth}
    if cfg.iterations > 0:
        state, sinfo = refine(
            state, pairs, T, alphas=alphas, smooth_rot=math.radians(cfg.smooth_rot_deg), smooth_trans=cfg.smooth_trans,
            robust_scale=cfg.robust_scale, iterations=cfg.iterations, rounds=cfg.robust_rounds,
        )
    else:
        sinfo = {"rounds": [], "iterations": 0, "pm_weight": pm_ok.astype(float),
                 "ray_weight": (pairs.ray_ok.astype(float) if use_rays else np.zeros(G * V))}
    timings["refine_s"] = time.perf_counter() - t3
    tick("global refinement")

    # ---- 5. disparity alignment (on the samples) ------------------------------------------------------
    pm_w = np.asarray(sinfo["pm_weight"], dtype=np.float64)
    Lsum = np.zeros((T, n))
    Lw = np.zeros((T, n))
    lw = wq * pm_w[:, None]
    np.add.at(Lsum, pi, lw * (logz + state.logs[pg][:, None]))
    np.add.at(Lw, pi, lw)
    Lf = np.where(Lw > 0, Lsum / np.maximum(Lw, 1e-300), np.nan)  # fused sample log depth (T,n)
    win_sigma_pm = np.full(G, 1e-3)
    disp_fit: list[dict] = [{} for _ in range(G)]
    for g in range(G):
        q = np.flatnonzero(pg == g)
        Lq = Lf[pi[q]]
        dev = (logz[q] + state.logs[g]) - Lq
        m = (wq[q] > 0) & np.isfinite(Lq)
        if m.any():
            win_sigma_pm[g] = max(1.4826 * float(np.median(np.abs(dev[m]))), 1e-3)
        if use_disp:
            dm = m & dv_s[g]
            fit = fit_disparity(d_s[g][dm].astype(np.float64), np.exp(-Lq[dm]), wq[q][dm])
            fit["enabled"] = bool(np.isfinite(fit["a"]) and fit["a"] > 0 and fit["delta_1_25"] >= 0.3)
            fit["log_sigma"] = max(fit["log_sigma"], 1e-3) if np.isfinite(fit["log_sigma"]) else float("inf")
            disp_fit[g] = fit

    # ---- 6. depth, streamed ---------------------------------------------------------------------------
    t4 = time.perf_counter()
    depth_out = np.zeros((T, H, W), np.float32)
    conf_out = np.zeros((T, H, W), np.float32)
    points_out = np.zeros((T, H, W, 3), np.float32)
    K = intrinsics_matrix(focals, focals, cx, cy)
    Kinv = np.linalg.inv(K)
    pix = np.concatenate([grid, np.ones((H * W, 1))], axis=-1)  # (HW,3)

    def finish(i: int, depth: np.ndarray, conf: np.ndarray) -> None:
        depth_out[i] = depth
        conf_out[i] = conf
        rays_i = pix @ Kinv[i].T  # K⁻¹ [u, v, 1]
        Xc = rays_i * depth.reshape(-1, 1)
        Xw = Xc @ state.R[i].T + state.c[i]
        Xw[depth.reshape(-1) <= 0] = 0.0
        points_out[i] = Xw.reshape(H, W, 3)

    cover_count = np.zeros(T, int)
    for s in st:
        cover_count[s : s + V] += 1
    acc = DepthAccumulator(T, H, W, cover_count, finish, robust_scale=3.0 * cfg.depth_spread, spread=cfg.depth_spread)
    order = np.argsort(st, kind="stable")
    for g in order:
        s0 = int(st[g])
        pm = np.asarray(windows["pointmap"][g], dtype=np.float64).reshape(V, H * W, 3)
        conf = np.asarray(windows["pointmap_conf"][g], dtype=np.float64).reshape(V, H * W)
        disp = np.asarray(windows["disparity"][g], dtype=np.float64).reshape(V, H * W) if use_disp else None
        delta = win_intr[g, 3]
        fit = disp_fit[g]
        for k in range(V):
            q = g * V + k
            i = s0 + k
            if not pm_ok[q]:
                acc.add(i, [])
                continue
            Pk = pm[k].copy()
            Pk[:, 2] += delta
            z = (Pk - c_pm[q]) @ R_pm[q][:, 2]  # camera-frame z: (Rᵀ(P − c))_z
            cw = np.where(conf[k] > 0, np.minimum(conf[k], cfg.conf_clip), 0.0)
            ok = (cw > 0) & (z > 0)
            ld = np.log(np.where(ok, z, 1.0)) + state.logs[g]
            # A down-weighted pair still gives depth where nothing else does (weight floor 1e-3):
            # its camera may disagree with the video, but its depths live in its own camera.
            wq_pair = max(pm_w[q], 1e-3)
            wpm = np.where(ok, cfg.alpha_pointmap * wq_pair * cw / win_sigma_pm[g] ** 2, 0.0)
            cands = [(ld.reshape(H, W), wpm.reshape(H, W), (wq_pair * cw).reshape(H, W))]
            if use_disp and fit.get("enabled"):
                dk = disp[k]
                dok = (dk != 0) & (cw > 0)
                if cfg.disparity_min is not None:
                    dok &= dk > cfg.disparity_min
                inv = (dk - fit["b"]) / fit["a"]
                dok &= inv > 0
                ldd = -np.log(np.where(dok, inv, 1.0))
                wd = np.where(dok, cfg.alpha_disparity * wq_pair * cw / fit["log_sigma"] ** 2, 0.0)
                cands.append((ldd.reshape(H, W), wd.reshape(H, W), None))
            acc.add(i, cands)
        tick(f"window {g} (frames {s0}–{s0 + V - 1}): depth")
    timings["depth_s"] = time.perf_counter() - t4

    # ---- gauge: median valid depth of frame 0 is 1 ----------------------------------------------------
    v0 = depth_out[0][conf_out[0] > 0]
    if v0.size:
        med = float(np.median(v0))
        gauge_kind = "median valid depth of frame 0 = 1"
    else:
        allv = depth_out[conf_out > 0]
        med = float(np.median(allv)) if allv.size else 1.0
        gauge_kind = "median valid depth of the video = 1 (frame 0 has no valid pixel)"
    inv_med = 1.0 / med if med > 0 else 1.0
    depth_out *= np.float32(inv_med)
    points_out *= np.float32(inv_med)
    world_from_cam = np.tile(np.eye(4), (T, 1, 1))
    world_from_cam[:, :3, :3] = state.R
    world_from_cam[:, :3, 3] = state.c * inv_med
    world_from_cam[0] = np.eye(4)

    # ---- diagnostics ----------------------------------------------------------------------------------
    ray_w = np.asarray(sinfo["ray_weight"], dtype=np.float64)
    win_diag = []
    flagged = []
    for g in range(G):
        q = np.arange(g * V, (g + 1) * V)
        wpm = pm_w[q]
        out_frames = [int(st[g] + k) for k in range(V) if pm_ok[q[k]] and wpm[k] < cfg.outlier_weight]
        if use_rays:
            out_frames += [int(st[g] + k) for k in range(V)
                           if pairs.ray_ok[q[k]] and ray_w[q[k]] < cfg.outlier_weight and int(st[g] + k) not in out_frames]
        bad = bool(out_frames) or not pm_ok[q].any()
        if bad:
            flagged.append(g)
        d = {
            "index": g,
            "start": int(st[g]),
            "scale": float(math.exp(state.logs[g]) * inv_med),
            "z_offset": float(win_intr[g, 3]),
            "focal_pointmap": float(win_intr[g, 0]),
            "pointmap_weight": wpm,
            "pnp_rms_px": float(np.nanmedian(rms_pm[q])) if np.isfinite(rms_pm[q]).any() else None,
            "inconsistent": bad,
            "outlier_frames": sorted(out_frames),
        }
        if use_rays:
            d["ray_scale"] = float(math.exp(state.logrho[g]) * inv_med)
            d["ray_weight"] = ray_w[q]
            d["focal_rays"] = float(ray_intr[g, 0, 0])
        if use_disp:
            d["disparity"] = disp_fit[g]
        win_diag.append(d)
    timings["total_s"] = time.perf_counter() - t_start
    diagnostics = {
        "method": "geo4d.fusion: closed-form window cameras + chaining + robust Levenberg-Marquardt; log-depth fusion",
        "config": cfg.as_dict(),
        "gauge": {"kind": gauge_kind, "depth_scale_applied": inv_med},
        "intrinsics": {"focal": float(np.median(focals)), "cx": float(cx), "cy": float(cy), "shared_focal": cfg.shared_focal},
        "samples_per_frame": int(n),
        "windows": win_diag,
        "flagged_windows": flagged,
        "flagged_starts": [int(st[g]) for g in flagged],
        "solver": {"iterations": int(sinfo["iterations"]), "rounds": sinfo["rounds"],
                   "smooth_scale": sinfo.get("smooth_scale"), "frame0_outlier": bool(sinfo.get("frame0_outlier", False))},
        "timings": timings,
    }
    tick("done")
    return FusionResult(
        depth=depth_out,
        confidence=conf_out,
        intrinsics=K,
        world_from_cam=world_from_cam,
        points=points_out,
        diagnostics=_jsonable(diagnostics),
    )
