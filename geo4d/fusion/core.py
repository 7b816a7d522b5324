"""``fuse``: overlapping window predictions → one consistent per-frame reconstruction.

Pipeline (each step is described with its math in docs/fusion.md):

1. **Per window, streamed** (one read of each window): reject NaN/inf; intrinsics (and the optional
   z offset) from the first point map; cameras from the Plücker maps; keep a regular sample of
   pixels (points, confidences, disparities) — a few hundred per frame.
2. **Closed-form cameras**: a shared focal length / principal point (robust median over windows and
   modalities), or — for a zoom (``focal``: auto / per_frame) — a focal per frame smoothed over time
   (:mod:`geo4d.fusion.focal`); the camera of every (window, frame) pair in its window by PnP on
   the point map.
3. **Chaining**: windows placed one after another by robust rotation averaging, depth-ratio scale
   and centre translation on the frames they share with what is already placed.
4. **Global refinement**: robust Levenberg-Marquardt over frame poses and window similarities (+ ray
   scales) with the point-map, ray and smoothness terms (:mod:`geo4d.fusion.solver`).
5. **Disparity alignment**: per-window affine maps fitted robustly against the fused depth.
6. **Depth, streamed** (second read of each window): per pixel, a robust weighted mean of every
   window's depth (point map, and disparity) in log depth — or, where no window's point map is
   valid, of the windows' depths from the disparity alone (far regions; ``depth_source``); points;
   the scale gauge.

Time and memory are linear in the number of frames: windows are read one at a time, the solver's
unknowns are 6 per frame and 8 per window with a banded sparse normal matrix, and the depth
buffers hold one window span.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geo4d.cameras import intrinsics_matrix, pixel_grid
from geo4d.errors import InputError, PredictionError
from geo4d.fusion.config import FusionConfig, FusionResult
from geo4d.fusion.depth import DepthAccumulator, DepthSource, disparity_log_depth, fit_disparity
from geo4d.fusion.focal import FocalTrack, focal_track
from geo4d.fusion.robust import robust_sigma, weighted_median
from geo4d.fusion.solver import PairData, chain_init, init_ray_scales, refine
from geo4d.fusion.window_cameras import intrinsics_from_pointmap, plucker_cameras, pnp, sample_pixels
from geo4d.geometry import Geometry
from geo4d.spec import jsonable

__all__ = ["fuse"]

Progress = Callable[[int, int, str], None]

_REQUIRED = {"pointmap": 3, "pointmap_conf": 0, "ray_dir": 3, "ray_moment": 3, "disparity": 0}


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in np.shape(a)) if not hasattr(a, "shape") else tuple(int(x) for x in a.shape)


def _check_layout(windows: Mapping[str, Any], starts: Sequence[int], n_frames: int, cfg: FusionConfig):
    """Check the windows' arrays against the enabled terms and the video; return ``(G, V, H, W, starts)``.

    Every array must be (G, V, H, W[, 3]); every window must lie inside the T frames and every frame be
    covered. Raises :class:`InputError` with one line naming the array or the window.
    """
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
    """Window ``g`` of array ``name`` as float64, refusing NaN/inf with a :class:`PredictionError`."""
    a = np.asarray(windows[name][g], dtype=np.float64)
    if not np.isfinite(a).all():
        bad = "NaN" if np.isnan(a).any() else "inf"
        raise PredictionError(f"windows/{name}: window {g} (frames {start}–{start + V - 1}) contains {bad}")
    return a


@dataclass
class _Setup:
    """What every step needs: shapes, the enabled terms, the pixel sample and the progress ticker."""

    cfg: FusionConfig
    G: int
    V: int
    H: int
    W: int
    T: int
    st: np.ndarray  # (G,) window starts
    flat: np.ndarray  # (n,) sampled pixel indices
    uv: np.ndarray  # (n, 2) their pixel coordinates
    uv_square: np.ndarray  # (n, 2) the same with v rescaled to square pixels (known fx ≠ fy), for PnP
    grid: np.ndarray  # (HW, 2) every pixel's coordinates
    pp_fixed: tuple[float, float] | None
    progress: Progress | None
    timings: dict = field(default_factory=dict)
    step: int = 0

    @property
    def use_rays(self) -> bool:
        return self.cfg.alpha_rays > 0

    @property
    def use_disp(self) -> bool:
        return self.cfg.alpha_disparity > 0

    @property
    def n(self) -> int:
        return len(self.flat)

    def tick(self, msg: str) -> None:
        self.step += 1
        if self.progress is not None:
            self.progress(self.step, 2 * self.G + 3, msg)


@dataclass
class _Samples:
    """Step 1's output: per-window pixel samples, point-map intrinsics and ray cameras."""

    P: np.ndarray  # (G, V, n, 3) float32 sampled points (z offset applied)
    w: np.ndarray  # (G, V, n) float32 clipped confidences
    win_intr: np.ndarray  # (G, 5) focal, cx, cy, z offset, rms of each window's first point map
    d: np.ndarray | None = None  # (G, V, n) sampled disparities
    dv: np.ndarray | None = None  # (G, V, n) bool, disparity valid
    ray_R: np.ndarray | None = None  # (G, V, 3, 3) ray-camera rotations (window frame)
    ray_c: np.ndarray | None = None  # (G, V, 3) ray-camera centres
    ray_intr: np.ndarray | None = None  # (G, V, 3) focal, cx, cy from the rays
    ray_q: np.ndarray | None = None  # (G, V, 2) rotation / centre rms of the ray fit


@dataclass
class _PairCameras:
    """Step 2's output: the PnP camera of every (window, frame) pair, plus the pairs for the solver."""

    pairs: PairData
    f_pm: np.ndarray  # (P,) PnP focal
    rms_pm: np.ndarray  # (P,) PnP reprojection rms (px)
    iterations: int


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
        n_frames: T, the number of frames of the video.
        config: :class:`FusionConfig` or a mapping validated into one (None: defaults).
        progress: optional ``progress(done, total, message)``.

    Returns:
        :class:`FusionResult` (depth 0 / confidence 0 where invalid; ``world_from_cam[0] = I``; scale
        such that frame 0's median point-map depth is 1; ``depth_source``: which modality gave each pixel).

    Raises:
        InputError: missing arrays, wrong shapes, windows outside the video or frames not covered.
        PredictionError: NaN/inf in an array, naming the array and the window.

    Example:
        >>> from geo4d.fusion import fuse
        >>> res = fuse(store_windows, starts, T)  # doctest: +SKIP
        >>> res.geometry.depth.shape, res.geometry.world_from_cam[0]  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    ctx = _setup(windows, starts, n_frames, FusionConfig.parse(config, what="fusion"), progress)
    # 1. per window, streamed: samples, point-map intrinsics, ray cameras
    samples = _sample_windows(windows, ctx)
    ctx.timings["windows_read_s"] = time.perf_counter() - t_start
    # 2. intrinsics and the camera of every (window, frame) pair
    t = time.perf_counter()
    focal, cx, cy = _shared_intrinsics(samples, ctx)
    focal_mode, guess, focal_info = _focal_mode(windows, samples, ctx, focal)
    cams = _pair_cameras(samples, ctx, guess, cx, cy, estimate_focal=focal_mode == "per_frame")
    focals = _frame_focals(samples, cams, ctx, focal, focal_mode, focal_info)
    ctx.timings["cameras_s"] = time.perf_counter() - t
    ctx.timings["pnp_iterations"] = cams.iterations
    # 3–4. chaining, then the global refinement
    state = _chain(cams.pairs, ctx)
    state, sinfo = _refine(state, cams.pairs, ctx)
    # 5. disparity alignment on the samples
    win_sigma, disp_fit = _fit_disparities(samples, cams.pairs, state, sinfo, ctx)
    # 6. depth, streamed
    t = time.perf_counter()
    aspect = 1.0 if ctx.cfg.intrinsics is None else float(ctx.cfg.intrinsics[1]) / float(ctx.cfg.intrinsics[0])
    K = intrinsics_matrix(focals, focals * aspect, cx, cy)
    depth, conf, points, source = _fuse_depth(windows, samples, cams.pairs, state, sinfo, win_sigma, disp_fit, K, ctx)
    ctx.timings["depth_s"] = time.perf_counter() - t
    # 7. gauge: median valid depth of frame 0 is 1
    gauge_kind, inv_med = _apply_gauge(depth, source, points)
    world_from_cam = _world_from_cam(state, inv_med, ctx.T)
    # 8. diagnostics
    ctx.timings["total_s"] = time.perf_counter() - t_start
    diagnostics = _diagnostics(samples, cams, state, sinfo, disp_fit, ctx, gauge_kind, inv_med, focals, cx, cy)
    diagnostics["intrinsics"].update(focal_info)
    ctx.tick("done")
    geometry = Geometry(depth, conf > 0, K, world_from_cam, points=points, confidence=conf)
    diagnostics["depth_source"] = {src.name.lower(): int((source == src).sum()) for src in DepthSource}
    return FusionResult(geometry, diagnostics=jsonable(diagnostics), depth_source=source)


def _setup(windows: Mapping[str, Any], starts: Sequence[int], n_frames: int, cfg: FusionConfig,
           progress: Progress | None) -> _Setup:
    """Check the windows' layout; choose the pixel sample (a regular grid of ~``samples_per_frame``)."""
    G, V, H, W, st = _check_layout(windows, starts, n_frames, cfg)
    flat, uv = sample_pixels(H, W, cfg.samples_per_frame)
    pp_fixed = None if cfg.estimate_principal_point else ((W - 1) / 2.0, (H - 1) / 2.0)
    uv_square = uv
    if cfg.intrinsics is not None:
        fx, fy, cx, cy = (float(v) for v in cfg.intrinsics)
        pp_fixed = (cx, cy)
        uv_square = np.stack([uv[:, 0], cy + (uv[:, 1] - cy) * fx / fy], -1)  # pixels of focal fx both ways
    return _Setup(cfg, G, V, H, W, int(n_frames), st, flat, uv, uv_square, pixel_grid(H, W).reshape(-1, 2), pp_fixed,
                  progress)


def _sample_windows(windows: Mapping[str, Any], ctx: _Setup) -> _Samples:
    """Step 1: read each window once; keep its pixel samples, first-frame intrinsics, ray cameras."""
    G, V, n = ctx.G, ctx.V, ctx.n
    s = _Samples(P=np.zeros((G, V, n, 3), np.float32), w=np.zeros((G, V, n), np.float32),
                 win_intr=np.full((G, 5), np.nan))
    if ctx.use_disp:
        s.d, s.dv = np.zeros((G, V, n), np.float32), np.zeros((G, V, n), bool)
    if ctx.use_rays:
        s.ray_R, s.ray_c = np.tile(np.eye(3), (G, V, 1, 1)), np.zeros((G, V, 3))
        s.ray_intr, s.ray_q = np.full((G, V, 3), np.nan), np.full((G, V, 2), np.nan)
    for g in range(G):
        s0 = int(ctx.st[g])
        _sample_pointmap(windows, g, s, ctx)
        if ctx.use_disp:
            _sample_disparity(windows, g, s, ctx)
        if ctx.use_rays:
            _ray_cameras(windows, g, s, ctx)
        ctx.tick(f"window {g} (frames {s0}–{s0 + V - 1}): cameras")
    return s


def _clipped_conf(conf: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """Confidences as weights: clipped at ``conf_clip``, 0 where invalid."""
    return np.where(conf > 0, np.minimum(conf, cfg.conf_clip), 0.0)


def _sample_pointmap(windows: Mapping[str, Any], g: int, s: _Samples, ctx: _Setup) -> None:
    """Window g's intrinsics (+ z offset) from its first point map, and its point/weight samples."""
    V, HW, s0 = ctx.V, ctx.H * ctx.W, int(ctx.st[g])
    pm = _read(windows, "pointmap", g, s0, V).reshape(V, HW, 3)
    wfull = _clipped_conf(_read(windows, "pointmap_conf", g, s0, V).reshape(V, HW), ctx.cfg)
    f0, cx0, cy0, delta, rms = intrinsics_from_pointmap(pm[0], ctx.grid, wfull[0], z_offset=bool(ctx.cfg.pointmap_z_offset),
                                                        pp=ctx.pp_fixed)
    s.win_intr[g] = (f0, cx0, cy0, delta, rms)
    Ps = pm[:, ctx.flat].copy()
    Ps[..., 2] += delta
    s.P[g] = Ps
    s.w[g] = wfull[:, ctx.flat]


def _valid_disparity(disp: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """Disparities that carry depth: non-zero (0 = sky) and above ``disparity_min`` when set."""
    ok = disp != 0
    if cfg.disparity_min is not None:
        ok &= disp > cfg.disparity_min
    return ok


def _sample_disparity(windows: Mapping[str, Any], g: int, s: _Samples, ctx: _Setup) -> None:
    """Window g's disparity at the sampled pixels and where it is valid."""
    disp = _read(windows, "disparity", g, int(ctx.st[g]), ctx.V).reshape(ctx.V, ctx.H * ctx.W)[:, ctx.flat]
    s.d[g] = disp
    s.dv[g] = _valid_disparity(disp, ctx.cfg)


def _ray_cameras(windows: Mapping[str, Any], g: int, s: _Samples, ctx: _Setup, per_frame: bool | None = None) -> None:
    """Window g's cameras (rotation, centre, intrinsics) recovered from its Plücker maps; each frame
    with its own intrinsics (ray homography) when ``per_frame`` (default: ``focal="per_frame"``)."""
    s0 = int(ctx.st[g])
    rd = _read(windows, "ray_dir", g, s0, ctx.V)
    rm = _read(windows, "ray_moment", g, s0, ctx.V)
    if per_frame is None:
        per_frame = ctx.cfg.focal == "per_frame" and ctx.cfg.intrinsics is None
    pc = plucker_cameras(rd, rm, ctx.pp_fixed, per_frame_intrinsics=per_frame)
    s.ray_R[g], s.ray_c[g] = pc.ref_from_cam_R, pc.centres
    s.ray_intr[g] = np.stack([pc.focal, pc.cx, pc.cy], -1)
    s.ray_q[g] = np.stack([pc.rot_rms, pc.centre_rms], -1)


def _shared_intrinsics(s: _Samples, ctx: _Setup) -> tuple[float, float, float]:
    """Step 2a: focal and principal point as weighted medians over windows and modalities."""
    G, cfg = ctx.G, ctx.cfg
    if cfg.intrinsics is not None:  # a calibrated camera: K is given, not estimated
        return float(cfg.intrinsics[0]), float(cfg.intrinsics[2]), float(cfg.intrinsics[3])
    fvals, fw = [s.win_intr[:, 0]], [np.full(G, cfg.alpha_pointmap)]
    cxs, cys = [s.win_intr[:, 1]], [s.win_intr[:, 2]]
    if ctx.use_rays:
        fvals.append(s.ray_intr[:, 0, 0])
        fw.append(np.full(G, cfg.alpha_rays))
        cxs.append(s.ray_intr[:, 0, 1])
        cys.append(s.ray_intr[:, 0, 2])
    fv, fwv = np.concatenate(fvals), np.concatenate(fw)
    ok_f = np.isfinite(fv) & (fv > 0)
    if not ok_f.any():
        raise PredictionError("windows/pointmap: no window has enough valid points to estimate the focal length")
    focal = weighted_median(fv, fwv * ok_f)
    if ctx.pp_fixed is not None:
        return focal, *ctx.pp_fixed
    return focal, weighted_median(np.concatenate(cxs), fwv * ok_f), weighted_median(np.concatenate(cys), fwv * ok_f)


def _focal_mode(windows: Mapping[str, Any], s: _Samples, ctx: _Setup, focal: float) -> tuple[str, np.ndarray, dict]:
    """Step 2b: ``"given"``, ``"shared"`` or ``"per_frame"``, a (T,) first focal of every frame, and a record.

    ``focal="auto"`` smooths the windows' first-frame point-map focals and per-frame ray focals over
    time (:func:`geo4d.fusion.focal.focal_track`) and picks per-frame when the held-out windows say
    the focal changes; then the ray cameras are recovered again with per-frame intrinsics (a second
    read of the ray maps — for zooming videos only).
    """
    cfg, full = ctx.cfg, np.full(ctx.T, focal)
    if cfg.intrinsics is not None:
        return "given", full, {"focal_mode": "given"}
    if cfg.focal == "shared":
        return "shared", full, {"focal_mode": "shared"}
    if cfg.focal == "per_frame":
        return "per_frame", _focal_evidence(s, ctx).focal, {"focal_mode": "per_frame"}
    track = _focal_evidence(s, ctx)
    info = {"focal_auto": track.summary()}
    if not track.varies:
        return "shared", full, {"focal_mode": "shared", **info}
    if ctx.use_rays:
        for g in range(ctx.G):
            _ray_cameras(windows, g, s, ctx, per_frame=True)
    return "per_frame", track.focal, {"focal_mode": "per_frame", **info}


def _focal_evidence(s: _Samples, ctx: _Setup) -> FocalTrack:
    """The focal track of the per-window estimates read so far: each window's first point map (its
    reference camera) and, with rays, every frame's ray intrinsics."""
    G, cfg = ctx.G, ctx.cfg
    point_maps = (ctx.st, s.win_intr[:, 0], np.full(G, cfg.alpha_pointmap), np.arange(G))
    frames, vals, ws, groups = (np.concatenate(x) for x in zip(point_maps, *_ray_focals(s, ctx)))
    return focal_track(frames, vals, ws, groups, ctx.T, robust_scale=cfg.robust_scale)


def _ray_focals(s: _Samples, ctx: _Setup) -> list[tuple[np.ndarray, ...]]:
    """The ray maps' focal evidence, ``[(frame, focal, weight, window)]`` of every (window, frame)
    pair in pair order (``g · V + k``), or ``[]`` without the ray term."""
    if not ctx.use_rays:
        return []
    G, V = ctx.G, ctx.V
    pg = np.repeat(np.arange(G), V)
    return [(ctx.st[pg] + np.tile(np.arange(V), G), s.ray_intr[:, :, 0].reshape(-1),
             np.full(G * V, ctx.cfg.alpha_rays), pg)]


def _pair_cameras(s: _Samples, ctx: _Setup, focal: np.ndarray, cx: float, cy: float,
                  estimate_focal: bool = False) -> _PairCameras:
    """Step 2c: the camera of every (window, frame) pair by batched PnP on its point-map samples.

    ``focal`` (T,) is each frame's focal (the starting value when ``estimate_focal``).
    """
    G, V, n = ctx.G, ctx.V, ctx.n
    pg, pk = np.repeat(np.arange(G), V), np.tile(np.arange(V), G)
    f0 = np.asarray(focal, dtype=np.float64)[ctx.st[pg] + pk]
    Pq = s.P.reshape(G * V, n, 3)  # float32; converted per chunk
    wq = s.w.reshape(G * V, n).astype(np.float64)
    R_pm, c_pm = np.zeros((G * V, 3, 3)), np.zeros((G * V, 3))
    f_pm, rms_pm = f0.copy(), np.full(G * V, np.nan)
    logz = np.zeros((G * V, n))
    chunk, iterations = 128, 0  # pairs per batched PnP (bounds its temporary arrays)
    for a in range(0, G * V, chunk):
        b = min(G * V, a + chunk)
        out = pnp(Pq[a:b].astype(np.float64), ctx.uv_square, wq[a:b], f0[a:b], cx, cy, estimate_focal=estimate_focal)
        R_pm[a:b], c_pm[a:b], f_pm[a:b], rms_pm[a:b] = out["R"], out["c"], out["focal"], out["rms"]
        iterations = max(iterations, out["iterations"])
        z = out["depth"]
        logz[a:b] = np.log(np.where(z > 0, z, 1.0))
        wq[a:b] = np.where(z > 0, wq[a:b], 0.0)
    pm_ok = np.isfinite(rms_pm) & ((wq > 0).sum(1) >= 6)
    wq[~pm_ok] = 0.0
    pairs = PairData(
        g=pg, k=pk, i=ctx.st[pg] + pk, R_pm=R_pm, c_pm=c_pm, pm_ok=pm_ok, logz=logz, wz=wq,
        R_ray=s.ray_R.reshape(G * V, 3, 3) if ctx.use_rays else None,
        c_ray=s.ray_c.reshape(G * V, 3) if ctx.use_rays else None,
        ray_ok=(np.isfinite(s.ray_q.reshape(G * V, 2)).all(-1)) if ctx.use_rays else None,
    )
    return _PairCameras(pairs, f_pm, rms_pm, iterations)


def _frame_focals(s: _Samples, cams: _PairCameras, ctx: _Setup, focal: float, mode: str, info: dict) -> np.ndarray:
    """Step 2d: (T,) focal per frame: the shared one, or (``mode="per_frame"``) the robust temporal
    smoothing (:func:`geo4d.fusion.focal.focal_track`) of every pair's PnP focal and ray focal."""
    if mode != "per_frame":
        return np.full(ctx.T, focal)
    pairs, cfg = cams.pairs, ctx.cfg
    pnp_focals = (pairs.i, cams.f_pm, np.where(pairs.pm_ok, cfg.alpha_pointmap, 0.0), pairs.g)
    frames, vals, ws, groups = (np.concatenate(x) for x in zip(pnp_focals, *_ray_focals(s, ctx)))
    if not (np.isfinite(vals) & (vals > 0) & (ws > 0)).any():
        return np.full(ctx.T, focal)
    track = focal_track(frames, vals, ws, groups, ctx.T, robust_scale=cfg.robust_scale)
    info["focal_smoothing"] = track.summary()
    return track.focal


def _chain(pairs: PairData, ctx: _Setup):
    """Step 3: place the windows one after another; every frame must be reached."""
    t = time.perf_counter()
    state, placed = chain_init(pairs, ctx.st, ctx.T)
    if not placed.all():
        gaps = np.flatnonzero(~placed)
        hint = "" if ctx.cfg.pointmap_z_offset else " (if the point maps carry a z offset, set pointmap_z_offset)"
        raise PredictionError(
            f"windows/pointmap: frames {int(gaps[0])}…{int(gaps[-1])} have no window whose point map fits a "
            f"pinhole camera in front of it{hint}"
        )
    init_ray_scales(state, pairs)
    ctx.timings["chain_s"] = time.perf_counter() - t
    ctx.tick("windows chained")
    return state


def _refine(state, pairs: PairData, ctx: _Setup):
    """Step 4: robust Levenberg-Marquardt over frame poses and window similarities."""
    t, cfg = time.perf_counter(), ctx.cfg
    alphas = {"pointmap": cfg.alpha_pointmap, "rays": cfg.alpha_rays, "smooth": cfg.alpha_smooth}
    if cfg.iterations > 0:
        state, sinfo = refine(
            state, pairs, ctx.T, alphas=alphas, smooth_rot=math.radians(cfg.smooth_rot_deg), smooth_trans=cfg.smooth_trans,
            robust_scale=cfg.robust_scale, iterations=cfg.iterations, rounds=cfg.robust_rounds,
            smooth_auto=cfg.smooth_auto, consensus=cfg.consensus_init,
        )
    else:
        sinfo = {"rounds": [], "iterations": 0, "pm_weight": pairs.pm_ok.astype(float),
                 "ray_weight": (pairs.ray_ok.astype(float) if ctx.use_rays else np.zeros(ctx.G * ctx.V))}
    ctx.timings["refine_s"] = time.perf_counter() - t
    ctx.tick("global refinement")
    return state, sinfo


def _fit_disparities(s: _Samples, pairs: PairData, state, sinfo: dict, ctx: _Setup) -> tuple[np.ndarray, list[dict]]:
    """Step 5: each window's point-map log-depth spread and disparity affine map, on the samples.

    The fused sample log depth ``L_ip`` is the weighted mean over pairs of ``log z + log s_g``; the
    spread is σ̂ of a window's deviations from it, the affine map ``disp ≈ a / depth + b`` is fitted
    robustly (:func:`geo4d.fusion.depth.fit_disparity`) and enabled when it explains the depth.
    """
    pg, pi, logz, wq = pairs.g, pairs.i, pairs.logz, pairs.wz
    pm_w = np.asarray(sinfo["pm_weight"], dtype=np.float64)
    Lsum, Lw = np.zeros((ctx.T, ctx.n)), np.zeros((ctx.T, ctx.n))
    lw = wq * pm_w[:, None]
    np.add.at(Lsum, pi, lw * (logz + state.logs[pg][:, None]))
    np.add.at(Lw, pi, lw)
    Lf = np.where(Lw > 0, Lsum / np.maximum(Lw, 1e-300), np.nan)  # fused sample log depth (T,n)
    win_sigma = np.full(ctx.G, 1e-3)
    disp_fit: list[dict] = [{} for _ in range(ctx.G)]
    for g in range(ctx.G):
        q = np.flatnonzero(pg == g)
        Lq = Lf[pi[q]]
        dev = (logz[q] + state.logs[g]) - Lq
        m = (wq[q] > 0) & np.isfinite(Lq)
        if m.any():
            win_sigma[g] = max(robust_sigma(dev[m]), 1e-3)
        if ctx.use_disp:
            dm = m & s.dv[g]
            fit = fit_disparity(s.d[g][dm].astype(np.float64), np.exp(-Lq[dm]), wq[q][dm])
            fit["enabled"] = bool(np.isfinite(fit["a"]) and fit["a"] > 0 and fit["delta_1_25"] >= 0.3)
            fit["log_sigma"] = max(fit["log_sigma"], 1e-3) if np.isfinite(fit["log_sigma"]) else float("inf")
            disp_fit[g] = fit
    return win_sigma, disp_fit


def _fuse_depth(windows: Mapping[str, Any], s: _Samples, pairs: PairData, state, sinfo: dict,
                win_sigma: np.ndarray, disp_fit: list[dict], K: np.ndarray, ctx: _Setup):
    """Step 6: read each window again; per pixel, a robust weighted mean of every window's log depth
    (point-map pixels), or of the windows' disparity-only depths where no point map is valid.

    Returns ``(depth (T,H,W), confidence (T,H,W), world points (T,H,W,3))``, float32, 0 where invalid,
    and the (T,H,W) uint8 :class:`DepthSource` map.
    """
    T, H, W, V = ctx.T, ctx.H, ctx.W, ctx.V
    depth_out, conf_out = np.zeros((T, H, W), np.float32), np.zeros((T, H, W), np.float32)
    points_out = np.zeros((T, H, W, 3), np.float32)
    source_out = np.zeros((T, H, W), np.uint8)
    Kinv = np.linalg.inv(K)
    pix = np.concatenate([ctx.grid, np.ones((H * W, 1))], axis=-1)  # (HW,3)

    def finish(i: int, depth: np.ndarray, conf: np.ndarray, source: np.ndarray) -> None:
        depth_out[i], conf_out[i], source_out[i] = depth, conf, source
        Xw = (pix @ Kinv[i].T) * depth.reshape(-1, 1) @ state.R[i].T + state.c[i]  # world_from_cam · d K⁻¹[u,v,1]
        Xw[depth.reshape(-1) <= 0] = 0.0
        points_out[i] = Xw.reshape(H, W, 3)

    cover_count = np.zeros(T, int)
    for s0 in ctx.st:
        cover_count[s0 : s0 + V] += 1
    acc = DepthAccumulator(T, H, W, cover_count, finish, robust_scale=3.0 * ctx.cfg.depth_spread,
                           spread=ctx.cfg.depth_spread, fallback_max_spread=ctx.cfg.disparity_only_max_error)
    pm_w = np.asarray(sinfo["pm_weight"], dtype=np.float64)
    for g in np.argsort(ctx.st, kind="stable"):
        _window_depth_candidates(windows, int(g), s, pairs, state, pm_w, win_sigma[g], disp_fit[g], acc, ctx)
        ctx.tick(f"window {g} (frames {int(ctx.st[g])}–{int(ctx.st[g]) + V - 1}): depth")
    return depth_out, conf_out, points_out, source_out


def _window_depth_candidates(windows: Mapping[str, Any], g: int, s: _Samples, pairs: PairData, state,
                             pm_w: np.ndarray, sigma: float, fit: dict, acc: DepthAccumulator, ctx: _Setup) -> None:
    """Window g's per-frame depth candidates (point map, and disparity through its affine map), and
    its disparity-only fallback candidates where its point map is invalid."""
    HW, V, cfg, s0 = ctx.H * ctx.W, ctx.V, ctx.cfg, int(ctx.st[g])
    pm = np.asarray(windows["pointmap"][g], dtype=np.float64).reshape(V, HW, 3)
    conf = np.asarray(windows["pointmap_conf"][g], dtype=np.float64).reshape(V, HW)
    disp = np.asarray(windows["disparity"][g], dtype=np.float64).reshape(V, HW) if ctx.use_disp else None
    use_fallback = ctx.use_disp and cfg.disparity_only_depth and bool(fit.get("enabled"))
    for k in range(V):
        q = g * V + k
        # A down-weighted pair still gives depth where nothing else does (weight floor 1e-3):
        # its camera may disagree with the video, but its depths live in its own camera.
        wq_pair = max(pm_w[q], 1e-3)
        cw = _clipped_conf(conf[k], cfg)
        fb = _disparity_only_candidate(disp[k], cw, fit, wq_pair, ctx) if use_fallback else None
        fallback = [] if fb is None else [fb]
        if not pairs.pm_ok[q]:
            acc.add(s0 + k, [], fallback)
            continue
        Pk = pm[k].copy()
        Pk[:, 2] += s.win_intr[g, 3]
        z = (Pk - pairs.c_pm[q]) @ pairs.R_pm[q][:, 2]  # camera-frame z: (Rᵀ(P − c))_z
        ok = (cw > 0) & (z > 0)
        ld = np.log(np.where(ok, z, 1.0)) + state.logs[g]
        wpm = np.where(ok, cfg.alpha_pointmap * wq_pair * cw / sigma ** 2, 0.0)
        cands = [(ld.reshape(ctx.H, ctx.W), wpm.reshape(ctx.H, ctx.W), (wq_pair * cw).reshape(ctx.H, ctx.W))]
        if ctx.use_disp and fit.get("enabled"):
            cands.append(_disparity_candidate(disp[k], cw, fit, wq_pair, ctx))
        acc.add(s0 + k, cands, fallback)


def _disparity_candidate(dk: np.ndarray, cw: np.ndarray, fit: dict, wq_pair: float, ctx: _Setup) -> tuple:
    """``(log depth, weight, None)`` of one frame's disparity: ``depth = a / (disp − b)`` where valid."""
    dok = _valid_disparity(dk, ctx.cfg) & (cw > 0)
    inv = (dk - fit["b"]) / fit["a"]
    dok &= inv > 0
    ldd = -np.log(np.where(dok, inv, 1.0))
    wd = np.where(dok, ctx.cfg.alpha_disparity * wq_pair * cw / fit["log_sigma"] ** 2, 0.0)
    return ldd.reshape(ctx.H, ctx.W), wd.reshape(ctx.H, ctx.W), None


def _disparity_only_candidate(dk: np.ndarray, cw: np.ndarray, fit: dict, wq_pair: float, ctx: _Setup) -> tuple | None:
    """``(log depth, weight, confidence)`` of one frame's disparity where its point map is invalid
    (``cw == 0``), or None when no pixel qualifies.

    The depth is ``a / (disp − b)`` (:func:`geo4d.fusion.depth.disparity_log_depth`) where the
    disparity is valid (not sky: non-zero, above ``disparity_min``), the map gives a positive inverse
    depth, and the predicted log-depth error ``σ`` is at most ``disparity_only_max_error``; weight
    ``α₂ · w_pair / σ²``, input confidence ``w_pair / (1 + (σ / depth_spread)²)``.
    """
    cfg = ctx.cfg
    dok = _valid_disparity(dk, cfg) & (cw <= 0)
    if not dok.any():
        return None
    ld, sig, pos = disparity_log_depth(dk, fit)
    dok &= pos & (sig <= cfg.disparity_only_max_error)
    if not dok.any():
        return None
    sig = np.where(dok, sig, 1.0)
    wd = np.where(dok, cfg.alpha_disparity * wq_pair / sig ** 2, 0.0)
    cd = np.where(dok, wq_pair / (1.0 + (sig / cfg.depth_spread) ** 2), 0.0)
    shape = (ctx.H, ctx.W)
    return np.where(dok, ld, 0.0).reshape(shape), wd.reshape(shape), cd.reshape(shape)


def _apply_gauge(depth: np.ndarray, source: np.ndarray, points: np.ndarray) -> tuple[str, float]:
    """Step 7: scale depth and points (in place) so the median point-map depth of frame 0 is 1
    (``source`` (T,H,W) :class:`DepthSource`; disparity-only pixels do not move the gauge)."""
    pm = source == DepthSource.POINTMAP
    v0 = depth[0][pm[0]]
    if v0.size:
        med = float(np.median(v0))
        kind = "median valid depth of frame 0 = 1"
    else:
        allv = depth[pm]
        med = float(np.median(allv)) if allv.size else 1.0
        kind = "median valid depth of the video = 1 (frame 0 has no valid pixel)"
    inv_med = 1.0 / med if med > 0 else 1.0
    depth *= np.float32(inv_med)
    points *= np.float32(inv_med)
    return kind, inv_med


def _world_from_cam(state, inv_med: float, T: int) -> np.ndarray:
    """(T, 4, 4) camera-to-world poses of the refined state, in the gauge; frame 0 exactly I."""
    world_from_cam = np.tile(np.eye(4), (T, 1, 1))
    world_from_cam[:, :3, :3] = state.R
    world_from_cam[:, :3, 3] = state.c * inv_med
    world_from_cam[0] = np.eye(4)
    return world_from_cam


def _diagnostics(s: _Samples, cams: _PairCameras, state, sinfo: dict, disp_fit: list[dict], ctx: _Setup,
                 gauge_kind: str, inv_med: float, focals: np.ndarray, cx: float, cy: float) -> dict:
    """Step 8: the JSON-able record of docs/fusion.md (gauge, intrinsics, per-window weights, flags)."""
    win_diag = [_window_diagnostics(g, s, cams, state, sinfo, disp_fit, ctx, inv_med) for g in range(ctx.G)]
    flagged = [d["index"] for d in win_diag if d["inconsistent"]]
    return {
        "method": "geo4d.fusion: closed-form window cameras + chaining + robust Levenberg-Marquardt; log-depth fusion",
        "config": ctx.cfg.fingerprint_dict(),
        "gauge": {"kind": gauge_kind, "depth_scale_applied": inv_med},
        "intrinsics": {"focal": float(np.median(focals)), "cx": float(cx), "cy": float(cy),
                       "focal_setting": ctx.cfg.focal, "given": ctx.cfg.intrinsics is not None},
        "samples_per_frame": int(ctx.n),
        "windows": win_diag,
        "flagged_windows": flagged,
        "flagged_starts": [int(ctx.st[g]) for g in flagged],
        "solver": {"iterations": int(sinfo["iterations"]), "rounds": sinfo["rounds"],
                   "smooth_scale": sinfo.get("smooth_scale"), "frame0_outlier": bool(sinfo.get("frame0_outlier", False))},
        "timings": ctx.timings,
    }


def _window_diagnostics(g: int, s: _Samples, cams: _PairCameras, state, sinfo: dict, disp_fit: list[dict],
                        ctx: _Setup, inv_med: float) -> dict:
    """One window's record: scale, offsets, weights, and the frames whose robust weight flags it."""
    V, st, pairs, cfg = ctx.V, ctx.st, cams.pairs, ctx.cfg
    q = np.arange(g * V, (g + 1) * V)
    wpm = np.asarray(sinfo["pm_weight"], dtype=np.float64)[q]
    ray_w = np.asarray(sinfo["ray_weight"], dtype=np.float64)
    out_frames = [int(st[g] + k) for k in range(V) if pairs.pm_ok[q[k]] and wpm[k] < cfg.outlier_weight]
    if ctx.use_rays:
        out_frames += [int(st[g] + k) for k in range(V)
                       if pairs.ray_ok[q[k]] and ray_w[q[k]] < cfg.outlier_weight and int(st[g] + k) not in out_frames]
    rms = cams.rms_pm[q]
    d = {
        "index": g,
        "start": int(st[g]),
        "scale": float(math.exp(state.logs[g]) * inv_med),
        "z_offset": float(s.win_intr[g, 3]),
        "focal_pointmap": float(s.win_intr[g, 0]),
        "pointmap_weight": wpm,
        "pnp_rms_px": float(np.nanmedian(rms)) if np.isfinite(rms).any() else None,
        "inconsistent": bool(out_frames) or not pairs.pm_ok[q].any(),
        "outlier_frames": sorted(out_frames),
    }
    if ctx.use_rays:
        d["ray_scale"] = float(math.exp(state.logrho[g]) * inv_med)
        d["ray_weight"] = ray_w[q]
        d["focal_rays"] = float(s.ray_intr[g, 0, 0])
    if ctx.use_disp:
        d["disparity"] = disp_fit[g]
    return d
