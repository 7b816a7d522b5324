"""Fusion benchmark: accuracy, robustness, speed and ablation of ``geo4d.fusion.fuse`` on synthetic scenes.

Inputs come from the synthetic predictor — a TEST INSTRUMENT (window predictions derived from ground
truth with unknown per-window gauges and configurable noise); the figures measure the fusion, not a
network. Metrics are ``geo4d.metrics.reconstruction_metrics`` (depth: one L1 scale+shift per video;
poses: Sim(3)-aligned ATE, RPE with Δ = 1 frame; focal error in percent).

Scenarios (issue 4): clean; smooth depth noise 5 % + 0.5° pose jitter ("noisy"); the same plus 2
corrupted windows with a 15° rotation error ("corrupted"); at 48 / 192 / 768 frames, 64×96 pixels.
Issue 13: a zoom (focal +30 % over the video, noisy predictions; "zoom", and with a 1 % focal error
per window frame, "zoom_fov_noise"): worst-frame focal error, and the focal mode auto-picked per scenario.
Far regions ("far": noisy, point map invalid beyond 12 units, disparity valid; "far_clean": the same
without noise, which must stay exact): Abs Rel on the pixels only the disparity sees, reported apart
from the overall one, and the sky pixels given depth (0).
Smoothing and initialisation (issue 13): independent per-(window, frame) rotation jitter ("jitter"),
a fast turn ("fast_turn", also against the fixed smoothness scales FIXED_SCALES), the jitter with 2
corrupted windows ("jitter_corrupted") or 1 drifting window ("jitter_drift").
Ablation on the noisy scenario: point map only, + disparity, + rays, + smoothness (full).
Speed: ``fuse`` alone on in-memory windows (best of 3 at 48 frames), and the whole ``geo4d fuse``
command on a store (start-up included).

    .venv/bin/python benchmarks/fusion.py [--quick] [--seeds 3]

Prints the tables and writes benchmarks/results/fusion.json and fusion.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H, W = 64, 96
SCENARIOS = {
    "clean": {},
    "noisy": {"depth_noise": 0.05, "pose_jitter_deg": 0.5},
    "corrupted": {"depth_noise": 0.05, "pose_jitter_deg": 0.5, "corrupt_windows": 2, "corrupt_deg": 15.0},
}
# The zoom (issue 13, item 4): the noisy predictions of a camera whose focal length grows 30 % over
# the video (geo4d.synthetic.make_scene's ``zoom``); "zoom_fov_noise" adds a 1 % focal error per
# (window, frame) (SyntheticNoise.focal_noise), shown for the record.
SCENARIOS["zoom"] = {"depth_noise": 0.05, "pose_jitter_deg": 0.5}
SCENARIOS["zoom_fov_noise"] = {"depth_noise": 0.05, "pose_jitter_deg": 0.5, "focal_noise": 0.01}
SCENES = {"zoom": {"zoom": 0.3}, "zoom_fov_noise": {"zoom": 0.3}}
# Far regions (issue 13, item 3): the noisy predictions with the point map invalid (confidence 0)
# beyond 12 scene units (18–43 % of the valid pixels of the three scenes), the disparity left valid
# there; sky keeps disparity 0. Those pixels get depth from the disparity alone.
SCENARIOS["far"] = {"depth_noise": 0.05, "pose_jitter_deg": 0.5, "pointmap_max_depth": 12.0}
SCENARIOS["far_clean"] = {"pointmap_max_depth": 12.0}  # must stay exact (scene 0: only the ground is near)
# Smoothing and initialisation (issue 13, items 1–2): independent rotation jitter of every (window,
# frame) camera, 0.5° per axis (SyntheticNoise.rot_jitter_axis_deg; "jitter"); the same on a fast
# turn (yaw acceleration peaking at 1.5°/frame², make_scene's ``turn_accel_deg``; "fast_turn"); with 2
# windows corrupted by a 15° rotation ("jitter_corrupted"); with 1 window drifting to 15° over its
# frames (``ramp_corruption``; "jitter_drift", reported, no target).
SCENARIOS["jitter"] = {"depth_noise": 0.05, "rot_jitter_axis_deg": 0.5}
SCENARIOS["fast_turn"] = dict(SCENARIOS["jitter"])
SCENES["fast_turn"] = {"turn_accel_deg": 1.5}
SCENARIOS["jitter_corrupted"] = {**SCENARIOS["jitter"], "corrupt_windows": 2, "corrupt_deg": 15.0}
SCENARIOS["jitter_drift"] = {**SCENARIOS["jitter"], "corrupt_windows": 1, "corrupt_deg": 15.0, "ramp_corruption": True}
#: fixed smoothness scales (``smooth_auto: false``, ``smooth_rot_deg``) the fast turn is compared with
FIXED_SCALES = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
ABLATION = [
    ("point map only", {"alpha_disparity": 0.0, "alpha_rays": 0.0, "alpha_smooth": 0.0}),
    ("+ disparity", {"alpha_rays": 0.0, "alpha_smooth": 0.0}),
    ("+ rays", {"alpha_smooth": 0.0}),
    ("+ smoothness (full)", {}),
]
KEYS = ("abs_rel", "delta_1_25", "ate_rel", "rpe_trans", "rpe_rot", "focal_err_pct")
TARGETS = {
    "clean": {"ate_rel": 0.001, "abs_rel": 0.005, "rpe_rot": 0.05, "focal_err_pct": 0.5},
    "noisy": {"abs_rel": 0.06, "rpe_rot": 0.3},
}
TARGETS["zoom"] = {"focal_err_max_pct": 1.0}  # the worst frame of the worst seed
TARGETS["far"] = {"far_abs_rel": 0.05}  # Abs Rel on the pixels only the disparity sees, worst seed
TARGETS["far_clean"] = {"far_abs_rel": 0.005, **TARGETS["clean"]}
TARGETS["jitter"] = {"rpe_rot": 0.2}  # independent jitter smoothed (issue 13, item 1)


def make_case(T: int, noise: dict, seed: int, scene: dict | None = None):
    """A synthetic video of T frames and its window predictions: ``(gt geometry, predictor, starts, windows)``
    (``scene``: extra :func:`geo4d.synthetic.make_scene` options, e.g. ``{"zoom": 0.3}``)."""
    from geo4d.predictor import stacked_windows
    from geo4d.synthetic import make_scene, render
    from geo4d.synthetic_predictor import SyntheticPredictor
    from geo4d.windows import window_starts

    video = render(make_scene(seed, n_frames=T, height=H, width=W, **(scene or {})))
    gt = video.geometry
    pred = SyntheticPredictor(gt, noise=noise, seed=seed)
    starts = window_starts(T)
    return gt, pred, starts, stacked_windows(pred, video.frames, starts)


def run_fuse(windows, starts, T, config: dict, repeat: int = 1):
    """``fuse`` with ``config`` (a mapping of FusionConfig fields); best wall time of ``repeat`` runs."""
    from geo4d.fusion import FusionConfig, fuse

    best, res = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fuse(windows, starts, T, config=FusionConfig.parse(config))
        best = min(best, time.perf_counter() - t0)
    return res, best


def evaluate(res, gt) -> dict[str, float]:
    """The benchmark's metrics (KEYS) of a fusion result against the ground-truth geometry."""
    from geo4d.metrics import reconstruction_metrics

    m = reconstruction_metrics(res.geometry.depth, res.geometry.intrinsics, res.geometry.world_from_cam, gt.depth, gt.intrinsics, gt.world_from_cam)
    f, fg = res.geometry.intrinsics[:, 0, 0], gt.intrinsics[:, 0, 0]
    return {k: float(m[k]) for k in KEYS} | {"focal_err_max_pct": float(100 * np.max(np.abs(f - fg) / fg))}


def cli_time(windows, starts, T: int) -> float:
    """Wall time of ``python -m geo4d_cli fuse`` (process start-up included) on a store holding the windows."""
    from geo4d.predictor import MODALITIES, WindowPrediction
    from storage.store import Store, VideoInfo

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        st = Store(path)
        st.ensure_video(VideoInfo("bench", "synthetic (benchmark)", T, H, W, 10.0))
        st.prepare_windows("bench", list(starts), 16, 4, "synthetic (test instrument)", "bench")
        for g in range(len(starts)):
            st.write_window("bench", g, WindowPrediction(**{k: windows[k][g] for k in MODALITIES}))
        env = dict(os.environ, PREFECT_LOGGING_LEVEL="WARNING")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "geo4d_cli", "fuse", "--store", str(path), "--video", "bench"],
                       check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def official_fixture_ablation() -> list[dict] | None:
    """The ablation on the official optimiser's fixture (../shared/geo4d-reference/fixtures/fusion).

    Unlike the synthetic instrument, whose modalities share one noisy depth and one set of jittered
    cameras, the fixture's point maps, disparities and ray trajectories carry independent errors, so
    each term can add information. Its point maps have a z offset (``pointmap_z_offset``); its ray
    input is a camera trajectory, turned into ray maps here with the fixture's intrinsics.
    """
    from geo4d.metrics import depth_metrics, reconstruction_metrics
    from geo4d.plucker import plucker_rays
    from geo4d.predictor import MODALITIES

    d = ROOT.parent / "shared" / "geo4d-reference" / "fixtures" / "fusion"
    if not (d / "case.npz").is_file():
        return None
    z = np.load(d / "case.npz")
    summary = json.loads((d / "case_summary.json").read_text())
    T, h, w = int(z["T"]), int(z["H"]), int(z["W"])
    starts = [int(s) for s in z["window_starts"]]
    win = {k: [] for k in MODALITIES}
    for g in range(len(starts)):
        win["pointmap"].append(z[f"in.w{g}.pts3d"])
        win["pointmap_conf"].append(z[f"in.w{g}.conf"][..., 0])
        win["disparity"].append(z[f"in.w{g}.inverse_depthmap"][..., 0])
        rd, rm = plucker_rays(z[f"in.w{g}.traj"].astype(np.float64), z["K"], h, w)
        win["ray_dir"].append(rd)
        win["ray_moment"].append(rm)
    win = {k: np.stack(v) for k, v in win.items()}
    gtP = np.tile(np.eye(4), (T, 1, 1))
    gtP[:, :3, :3], gtP[:, :3, 3] = z["gt_R_c2w"], z["gt_C"]
    Kg = np.broadcast_to(z["K"], (T, 3, 3))

    ours_valid = []

    def metrics(depth, K, P):
        m = reconstruction_metrics(depth, K, P, z["gt_depth"], Kg, gtP)
        out = {k: float(m[k]) for k in KEYS} | {"ate": float(m["ate"])}
        # Also on the pixels our fusion marks valid (with the disparity term: all of them; the fixture's
        # conf-0 corner gets depth from the disparity alone — without it, that corner stays empty and
        # the metric above counts it as errors; the official optimiser fills it).
        if ours_valid:
            dm = depth_metrics(depth, z["gt_depth"], valid=ours_valid[0])
            out["abs_rel_valid"] = float(dm["abs_rel"])
        return out

    ours_valid.append(run_fuse(win, starts, T, {"pointmap_z_offset": True})[0].geometry.depth > 0)
    rows = []
    offP = z["final_poses_c2w"].astype(np.float64)
    offK = np.broadcast_to(np.array([[summary["final_focal"], 0, w / 2], [0, summary["final_focal"], h / 2], [0, 0, 1]]), (T, 3, 3))
    rows.append({"terms": "official optimiser (500 Adam steps, all terms)", **metrics(z["final_depth"].astype(np.float64), offK, offP),
                 "seconds": None})
    for label, cfg in ABLATION:
        res, dt = run_fuse(win, starts, T, {"pointmap_z_offset": True, **cfg})
        rows.append({"terms": f"ours: {label}", "config": cfg, **metrics(res.geometry.depth, res.geometry.intrinsics, res.geometry.world_from_cam), "seconds": dt})
    return rows


def long_video(T: int = 1000, height: int = 160, width: int = 256) -> dict:
    """A long video at the network's size, windows in a float16 Zarr group, fused in a child process
    whose peak memory (max RSS right after ``fuse``, imports and outputs included) is reported."""
    import zarr

    from geo4d.predictor import MODALITIES
    from geo4d.synthetic import make_scene, render
    from geo4d.synthetic_predictor import SyntheticPredictor
    from geo4d.windows import window_starts

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        video = render(make_scene(0, n_frames=T, height=height, width=width))
        gt = video.geometry
        pred = SyntheticPredictor(gt, noise=SCENARIOS["noisy"], seed=0)
        starts = window_starts(T)
        grp = zarr.open_group(str(Path(tmp) / "w.zarr"), mode="w")
        shapes = {"pointmap": (3,), "pointmap_conf": (), "ray_dir": (3,), "ray_moment": (3,), "disparity": ()}
        arrs = {k: grp.create_array(k, shape=(len(starts), 16, height, width) + shapes[k], dtype="float16",
                                    chunks=(1, 16, height, width) + shapes[k]) for k in MODALITIES}
        for g, s in enumerate(starts):
            p = pred.predict_window(video.frames[s : s + 16], s)
            for k in MODALITIES:
                arrs[k][g] = getattr(p, k).astype(np.float16)
        np.savez(Path(tmp) / "gt.npz", depth=gt.depth, K=gt.intrinsics, P=gt.world_from_cam)
        gen_s = time.perf_counter() - t0
        child = f"""
import json, sys, time, numpy as np, zarr
sys.path.insert(0, {str(ROOT)!r})
from geo4d.fusion import fuse
from geo4d.metrics import reconstruction_metrics
g = zarr.open_group({str(Path(tmp) / "w.zarr")!r}, mode="r")
w = {{k: g[k] for k in {list(MODALITIES)!r}}}
t0 = time.perf_counter()
res = fuse(w, {starts!r}, {T})
dt = time.perf_counter() - t0
import resource
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
z = np.load({str(Path(tmp) / "gt.npz")!r})
m = reconstruction_metrics(res.geometry.depth, res.geometry.intrinsics, res.geometry.world_from_cam, z["depth"], z["K"], z["P"])
print(json.dumps({{"seconds": dt, "peak_rss_mib": peak, **{{k: float(m[k]) for k in {list(KEYS)!r}}}}}))
"""
        out = subprocess.run([sys.executable, "-c", child], check=True, capture_output=True, text=True, cwd=ROOT)
    row = json.loads(out.stdout.strip().splitlines()[-1])  # peak RSS measured right after fuse (before metrics)
    outputs_mib = T * height * width * (4 + 4 + 12) / 2**20
    return {"frames": T, "height": height, "width": width, "windows": len(starts), "storage": "zarr float16",
            **row, "frames_per_s": T / row["seconds"], "outputs_mib": outputs_mib,
            "generation_s": gen_s}


def mean_rows(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def main() -> int:
    """Run the benchmark (see the module docstring); exit status 1 when a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="scenes averaged at 48 frames (longer videos: seed 0)")
    ap.add_argument("--quick", action="store_true", help="48 frames only, one seed, no CLI timing")
    ap.add_argument("--long", action="store_true", help="also fuse 1,000 frames at 160×256 from a float16 Zarr group")
    args = ap.parse_args()
    lengths = [48] if args.quick else [48, 192, 768]
    seeds = list(range(1 if args.quick else args.seeds))

    make_case(16, {}, 0)  # warm imports
    results: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version()},
                     "resolution": [H, W], "predictor": "synthetic (test instrument)", "scenarios": SCENARIOS,
                     "runs": [], "ablation": [], "speed": {}}
    print(f"fusion benchmark — {H}×{W}, synthetic predictor (test instrument)")
    results["runs"] = [scenario_row(name, noise, T, seeds) for T in lengths for name, noise in SCENARIOS.items()]
    results["ablation"] = ablation_rows(seeds)
    fx = official_fixture_ablation()
    if fx is not None:
        results["official_fixture"] = fx
        print("official fixture (21 frames, 24×32, independent errors per modality):")
        for row in fx:
            print(f"  {row['terms']:<48} AbsRel {row['abs_rel']:.4f} (valid px {row['abs_rel_valid']:.5f})  ATE {row['ate']:.5f}  RPE-R {row['rpe_rot']:.4f}°  "
                  f"focal {row['focal_err_pct']:.3f}%")
    results["speed"] = speed_figures(results["runs"], lengths, cli=not args.quick)
    if args.long:
        results["long_video"] = lv = long_video()
        print(f"long video: {lv['frames']} frames at {lv['height']}×{lv['width']} ({lv['windows']} windows, zarr float16): "
              f"{lv['seconds']:.1f} s ({lv['frames_per_s']:.0f} frames/s), peak RSS {lv['peak_rss_mib']:.0f} MiB "
              f"(outputs alone {lv['outputs_mib']:.0f} MiB); AbsRel {lv['abs_rel']:.4f}, RPE-R {lv['rpe_rot']:.4f}°")
    results["fast_turn_sweep"] = fixed_scale_sweep(seeds)
    results["targets"] = checks = target_checks(results["runs"], results["speed"], lengths, results["fast_turn_sweep"])
    for c in checks:
        print(f"  [{'ok' if c['ok'] else 'MISSED'}] {c['what']}: {c['value']:.4g}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    if not args.quick:
        (out / "fusion.json").write_text(json.dumps(results, indent=2))
        (out / "fusion.md").write_text(markdown(results))
        print(f"wrote {out / 'fusion.json'} and {out / 'fusion.md'}")
    return 0 if all(c["ok"] for c in checks) else 1


def scenario_row(name: str, noise: dict, T: int, seeds: list[int]) -> dict:
    """One scenario at T frames: metrics averaged over the seeds (48 frames) or seed 0, with timings."""
    per_seed, times, detect, modes, far = [], [], [], [], []
    for seed in (seeds if T == 48 else [0]):
        gt, pred, starts, win = make_case(T, noise, seed, SCENES.get(name))
        res, dt = run_fuse(win, starts, T, {}, repeat=3 if T == 48 and seed == 0 else 1)
        per_seed.append(evaluate(res, gt))
        if noise.get("pointmap_max_depth"):
            far.append(far_region_metrics(res, gt, noise["pointmap_max_depth"]))
        modes.append(res.diagnostics["intrinsics"].get("focal_mode"))
        times.append(dt)
        if noise.get("corrupt_windows"):
            detect.append(res.diagnostics["flagged_starts"] == pred.corrupted_starts)
    row = {"scenario": name, "frames": T, "seeds": len(per_seed), **mean_rows(per_seed),
           "worst": {k: float(max(r[k] for r in per_seed) if k != "delta_1_25" else min(r[k] for r in per_seed))
                     for k in KEYS},
           "seconds": float(np.mean(times)), "frames_per_s": float(T / np.mean(times))}
    if detect:
        row["corrupted_detected"] = all(detect)
    row["worst"]["focal_err_max_pct"] = float(max(r["focal_err_max_pct"] for r in per_seed))
    row["per_seed"] = per_seed
    row["focal_modes"] = modes
    if far:
        row["far"] = {k: [f[k] for f in far] for k in far[0]}
        row["worst"] |= {"far_abs_rel": max(f["far_abs_rel"] for f in far),
                         "sky_with_depth": max(f["sky_with_depth"] for f in far)}
    print(f"  {name:<9} T={T:<4} AbsRel {row['abs_rel']:.4f}  δ<1.25 {row['delta_1_25']:.3f}  "
          f"ATE/path {row['ate_rel']:.2e}  RPE-T {row['rpe_trans']:.2e}  RPE-R {row['rpe_rot']:.4f}°  "
          f"focal {row['focal_err_pct']:.3f}%  {row['seconds']:.2f} s  {row['frames_per_s']:.0f} fr/s"
          + (f"  corrupted windows found: {row['corrupted_detected']}" if detect else "")
          + (f"  focal per frame, worst frame {row['worst']['focal_err_max_pct']:.3f}%" if "per_frame" in modes else ""))
    if far:
        print(f"  {'':<9} far pixels (disparity only): Abs Rel worst {row['worst']['far_abs_rel']:.4f}, covered "
              f"{min(f['far_covered'] for f in far):.3f}; sky pixels given depth {row['worst']['sky_with_depth']}")
    return row


def fixed_scale_sweep(seeds: list[int], T: int = 48) -> list[dict]:
    """The fast turn with the automatic smoothness scale and with each of FIXED_SCALES, per seed."""
    rows = []
    for seed in seeds:
        gt, _, starts, win = make_case(T, SCENARIOS["fast_turn"], seed, SCENES["fast_turn"])
        auto = evaluate(run_fuse(win, starts, T, {})[0], gt)["rpe_rot"]
        fixed = {str(s): evaluate(run_fuse(win, starts, T, {"smooth_auto": False, "smooth_rot_deg": s})[0], gt)["rpe_rot"]
                 for s in FIXED_SCALES}
        best = min(fixed, key=fixed.get)
        rows.append({"seed": seed, "auto_rpe_rot": auto, "fixed_rpe_rot": fixed, "best_fixed": float(best),
                     "ratio_to_best": auto / fixed[best]})
        print(f"  fast turn seed {seed}: RPE-R auto {auto:.4f}°, fixed " + ", ".join(f"{k}: {v:.4f}" for k, v in fixed.items())
              + f" → {auto / fixed[best]:.3f}× the best ({best})")
    return rows


def far_region_metrics(res, gt, max_depth: float) -> dict:
    """Depth on the pixels only the disparity sees (ground truth valid, depth beyond the point map's
    range ``max_depth``): Abs Rel after the video's own scale+shift (that of ``evaluate``; pixels left
    empty count, as there), the share given depth and the share marked disparity-only
    (``depth_source`` 2), and the sky pixels (ground truth invalid) given a depth (must be 0)."""
    from geo4d.metrics import reconstruction_metrics

    g = res.geometry
    m = reconstruction_metrics(g.depth, g.intrinsics, g.world_from_cam, gt.depth, gt.intrinsics, gt.world_from_cam)
    gv = np.asarray(gt.valid, bool) & np.isfinite(gt.depth)
    farm = gv & (np.where(gv, gt.depth, 0.0) > max_depth)
    p = m["depth_scale"] * g.depth[farm] + m["depth_shift"]
    src = res.depth_source
    return {"far_abs_rel": float(np.mean(np.abs(p - gt.depth[farm]) / gt.depth[farm])), "far_pixels": int(farm.sum()),
            "far_covered": float(np.mean(g.depth[farm] > 0)), "far_from_disparity": float(np.mean(src[farm] == 2)),
            "sky_with_depth": int((g.depth[~gv] > 0).sum())}


def ablation_rows(seeds: list[int]) -> list[dict]:
    """The noisy 48-frame scenario with each fusion term switched off in turn."""
    print("ablation (noisy, 48 frames):")
    rows = []
    for label, cfg in ABLATION:
        per_seed = []
        for seed in seeds:
            gt, pred, starts, win = make_case(48, SCENARIOS["noisy"], seed)
            res, _ = run_fuse(win, starts, 48, cfg)
            per_seed.append(evaluate(res, gt))
        row = {"terms": label, "config": cfg, **mean_rows(per_seed)}
        rows.append(row)
        print(f"  {label:<20} AbsRel {row['abs_rel']:.4f}  δ<1.25 {row['delta_1_25']:.3f}  ATE/path {row['ate_rel']:.2e}  "
              f"RPE-T {row['rpe_trans']:.2e}  RPE-R {row['rpe_rot']:.4f}°  focal {row['focal_err_pct']:.3f}%")
    return rows


def speed_figures(runs: list[dict], lengths: list[int], cli: bool) -> dict:
    """Speed and scaling of the noisy scenario (seed 0), and the CLI's wall time."""
    by = {(r["scenario"], r["frames"]): r for r in runs if r["scenario"] == "noisy"}
    sp = {"fuse_48_s": by[("noisy", 48)]["seconds"]}
    if 192 in lengths:
        sp["ratio_192_over_48"] = by[("noisy", 192)]["seconds"] / by[("noisy", 48)]["seconds"]
    if 768 in lengths:
        sp["per_frame_ratio_768_over_48"] = (by[("noisy", 768)]["seconds"] / 768) / (by[("noisy", 48)]["seconds"] / 48)
    if cli:
        gt, pred, starts, win = make_case(48, SCENARIOS["noisy"], 0)
        sp["cli_fuse_48_s"] = cli_time(win, starts, 48)
    print("speed: " + ", ".join(f"{k} {v:.2f}" for k, v in sp.items()))
    return sp


def target_checks(runs: list[dict], sp: dict, lengths: list[int], sweep: list[dict] | None = None) -> list[dict]:
    """The accuracy, robustness and speed targets, each with its value and whether it is met."""
    checks = []
    rows = {(r["scenario"], r["frames"]): r for r in runs}
    for x in sweep or []:
        checks.append({"what": f"fast turn seed {x['seed']}: RPE-R ≤ 1.1× the best fixed scale ({x['best_fixed']})",
                       "value": x["ratio_to_best"], "ok": x["ratio_to_best"] <= 1.1})
    for T in lengths:
        if ("jitter_corrupted", T) in rows and ("jitter", T) in rows:
            bad, ref = rows[("jitter_corrupted", T)], rows[("jitter", T)]
            for k in ("abs_rel", "rpe_rot"):
                v = max(b[k] / r[k] for b, r in zip(bad["per_seed"], ref["per_seed"]))
                checks.append({"what": f"jitter_corrupted T={T} {k} ≤ 1.1× jitter (worst seed)", "value": v, "ok": v <= 1.1})
            checks.append({"what": f"jitter_corrupted T={T}: flagged windows = corrupted windows (every seed)",
                           "value": float(bad["corrupted_detected"]), "ok": bad["corrupted_detected"]})
        for scen, tg in TARGETS.items():
            for k, lim in tg.items():
                v = rows[(scen, T)]["worst"][k]
                checks.append({"what": f"{scen} T={T} {k} (worst seed) < {lim}", "value": v, "ok": v < lim})
        for k in ("abs_rel", "rpe_rot", "ate_rel"):
            v, ref = rows[("corrupted", T)][k], rows[("noisy", T)][k]
            checks.append({"what": f"corrupted T={T} {k} ≤ 1.5× noisy", "value": v / ref if ref > 0 else 0.0,
                           "ok": v <= 1.5 * ref})
        if "corrupted_detected" in rows[("corrupted", T)]:
            checks.append({"what": f"corrupted T={T}: flagged windows = corrupted windows",
                           "value": float(rows[("corrupted", T)]["corrupted_detected"]),
                           "ok": rows[("corrupted", T)]["corrupted_detected"]})
        for scen in ("far", "far_clean"):
            v = rows[(scen, T)]["worst"]["sky_with_depth"]
            checks.append({"what": f"{scen} T={T}: sky pixels given depth = 0", "value": float(v), "ok": v == 0})
        for scen, want in (("clean", "shared"), ("noisy", "shared"), ("zoom", "per_frame")):
            got = rows[(scen, T)]["focal_modes"]
            checks.append({"what": f"{scen} T={T}: focal auto-picked {want} on every seed",
                           "value": float(np.mean([m == want for m in got])), "ok": all(m == want for m in got)})
    checks.append({"what": "fuse 48 frames < 5 s", "value": sp["fuse_48_s"], "ok": sp["fuse_48_s"] < 5})
    if "ratio_192_over_48" in sp:
        checks.append({"what": "4× frames ≤ 6× time", "value": sp["ratio_192_over_48"], "ok": sp["ratio_192_over_48"] <= 6})
    if "per_frame_ratio_768_over_48" in sp:
        v = sp["per_frame_ratio_768_over_48"]
        checks.append({"what": "time/frame at 768 ≤ 1.5× at 48", "value": v, "ok": v <= 1.5})
    if "cli_fuse_48_s" in sp:
        checks.append({"what": "geo4d fuse command, 48 frames < 10 s", "value": sp["cli_fuse_48_s"], "ok": sp["cli_fuse_48_s"] < 10})
    return checks


def markdown(r: dict) -> str:
    """The results as benchmarks/results/fusion.md."""
    L = [f"# Fusion benchmark ({r['resolution'][0]}×{r['resolution'][1]}, synthetic predictor — a test instrument)", "",
         f"Machine: {r['machine']['cpu_count']} CPUs, {r['machine']['platform']}, Python {r['machine']['python']}. "
         "Metrics: `geo4d.metrics.reconstruction_metrics` (depth: one L1 scale+shift per video; poses: Sim(3)-aligned "
         "ATE as a fraction of the path length, RPE with Δ = 1 frame). 48-frame rows average "
         f"{max(x['seeds'] for x in r['runs'])} scenes; longer videos one scene. Generated by `benchmarks/fusion.py`.", "",
         "| scenario | frames | Abs Rel | δ<1.25 | ATE/path | RPE-T | RPE-R (°) | focal err (%) | time (s) | frames/s |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        extra = "" if "corrupted_detected" not in x else (" (corrupted windows flagged)" if x["corrupted_detected"] else " (detection MISSED)")
        if "per_frame" in x.get("focal_modes", []):
            extra += f" (focal per frame; worst frame {x['worst']['focal_err_max_pct']:.3f} %)"
        L.append(f"| {x['scenario']}{extra} | {x['frames']} | {x['abs_rel']:.4f} | {x['delta_1_25']:.4f} | {x['ate_rel']:.2e} | "
                 f"{x['rpe_trans']:.2e} | {x['rpe_rot']:.4f} | {x['focal_err_pct']:.4f} | {x['seconds']:.2f} | {x['frames_per_s']:.0f} |")
    fr = [x for x in r["runs"] if "far" in x]
    if fr:
        L += ["", "## Far regions (point map invalid beyond 12 units, disparity valid)", "",
              "| scenario | frames | Abs Rel, disparity-only pixels (worst seed) | share given depth | "
              "share marked disparity-only | sky pixels given depth |", "|---|---|---|---|---|---|"]
        L += [f"| {x['scenario']} | {x['frames']} | {x['worst']['far_abs_rel']:.2e} | {min(x['far']['far_covered']):.4f} | "
              f"{min(x['far']['far_from_disparity']):.4f} | {x['worst']['sky_with_depth']} |" for x in fr]
    L += ["", "## Ablation (noisy scenario, 48 frames)", "",
          "| terms | Abs Rel | δ<1.25 | ATE/path | RPE-T | RPE-R (°) | focal err (%) |", "|---|---|---|---|---|---|---|"]
    for x in r["ablation"]:
        L.append(f"| {x['terms']} | {x['abs_rel']:.4f} | {x['delta_1_25']:.4f} | {x['ate_rel']:.2e} | {x['rpe_trans']:.2e} | "
                 f"{x['rpe_rot']:.4f} | {x['focal_err_pct']:.4f} |")
    if r.get("official_fixture"):
        L += ["", "## Ablation on the official optimiser's fixture (21 frames, 24×32; independent errors per modality)", "",
              "Abs Rel (all) counts the pixels a run leaves empty (ours without the disparity term: the fixture's "
              "conf-0 corner, 1.6 % of the pixels, which the disparity fills otherwise); Abs Rel (valid) uses the "
              "pixels our full fusion marks valid (all), for both runs.", "",
              "| run | Abs Rel (all) | Abs Rel (valid) | δ<1.25 | ATE | RPE-R (°) | focal err (%) | time (s) |",
              "|---|---|---|---|---|---|---|---|"]
        for x in r["official_fixture"]:
            t = "—" if x["seconds"] is None else f"{x['seconds']:.2f}"
            L.append(f"| {x['terms']} | {x['abs_rel']:.4f} | {x['abs_rel_valid']:.5f} | {x['delta_1_25']:.4f} | {x['ate']:.5f} | {x['rpe_rot']:.4f} | "
                     f"{x['focal_err_pct']:.3f} | {t} |")
    if r.get("long_video"):
        lv = r["long_video"]
        L += ["", "## Long video", "",
              f"{lv['frames']} frames at {lv['height']}×{lv['width']} ({lv['windows']} windows read from a float16 Zarr group, "
              f"noisy scenario): {lv['seconds']:.1f} s ({lv['frames_per_s']:.0f} frames/s), peak memory of the fusing "
              f"process {lv['peak_rss_mib']:.0f} MiB, of which the outputs (depth, confidence, points) are "
              f"{lv['outputs_mib']:.0f} MiB. Abs Rel {lv['abs_rel']:.4f}, δ<1.25 {lv['delta_1_25']:.4f}, "
              f"ATE/path {lv['ate_rel']:.2e}, RPE-R {lv['rpe_rot']:.4f}°, focal error {lv['focal_err_pct']:.4f} %."]
    if r.get("fast_turn_sweep"):
        L += ["", "## Fast turn: the automatic smoothness scale against fixed ones (48 frames, RPE-R in degrees)", "",
              "| seed | automatic | " + " | ".join(f"fixed {s}" for s in FIXED_SCALES) + " | auto / best fixed |",
              "|---|---|" + "---|" * len(FIXED_SCALES) + "---|"]
        for x in r["fast_turn_sweep"]:
            L.append(f"| {x['seed']} | {x['auto_rpe_rot']:.4f} | " + " | ".join(f"{x['fixed_rpe_rot'][str(s)]:.4f}" for s in FIXED_SCALES)
                     + f" | {x['ratio_to_best']:.3f} |")
    L += ["", "## Speed", ""] + [f"- {k}: {v:.3f}" for k, v in r["speed"].items()]
    L += ["", "## Targets (issue 4)", ""] + [f"- [{'x' if c['ok'] else ' '}] {c['what']}: {c['value']:.4g}" for c in r["targets"]]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
