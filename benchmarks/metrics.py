"""Evaluation benchmark: cost of the depth alignment and of the pose metrics.

* Depth: the exact L1 scale+shift fit (``fit_scale_shift_l1``) and the official Adam loop replica
  (``fit_scale_shift_l1_adam``; seconds per Adam step, the loop runs up to 1000/5000 steps) on
  synthetic sequences of 1 M, 5 M and 22 M valid pixels (22 M ≈ a 50-frame Sintel sequence at
  1024×436), plus how far the exact fit's objective is below the Adam loop's with the Sintel/Bonn
  settings on the 1 M case.
* Poses: ``pose_metrics`` (Sim(3) ATE + RPE) and the same numbers through evo, on a 1000-pose
  trajectory.

    .venv/bin/python benchmarks/metrics.py [--quick]

Prints a table and writes benchmarks/results/metrics.json and metrics.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _depth_case(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0.5, 60.0, n).astype(np.float32)
    pred = ((gt - 1.0) / 2.7 * np.exp(rng.normal(0, 0.08, n))).astype(np.float32)
    out = rng.random(n) < 0.03
    pred[out] *= rng.uniform(0.3, 3.0, int(out.sum())).astype(np.float32)
    return pred, gt


def bench_depth(sizes: list[int]) -> list[dict]:
    import torch

    from geo4d.metrics.depth import fit_scale_shift_l1, fit_scale_shift_l1_adam

    rows = []
    for n in sizes:
        pred, gt = _depth_case(n)
        t0 = time.perf_counter()
        s, t = fit_scale_shift_l1(pred, gt)
        exact_s = time.perf_counter() - t0
        # seconds per Adam step (10 steps timed)
        P, G = torch.from_numpy(pred), torch.from_numpy(gt)
        a = torch.tensor([1.0], requires_grad=True)
        b = torch.tensor([0.0], requires_grad=True)
        opt = torch.optim.Adam([a, b], lr=1e-2)
        t0 = time.perf_counter()
        for _ in range(10):
            opt.zero_grad()
            loss = torch.abs(a * P + b - G).sum()
            loss.backward()
            opt.step()
            loss.item()
        step_s = (time.perf_counter() - t0) / 10
        row = {"pixels": n, "exact_fit_s": exact_s, "adam_step_s": step_s,
               "adam_5000_steps_s": 5000 * step_s, "exact_scale": s, "exact_shift": t}
        if n <= 1_000_000:
            t0 = time.perf_counter()
            sa, ta = fit_scale_shift_l1_adam(pred, gt, lr=1e-2, max_iters=5000, device="cpu")
            row["adam_loop_s"] = time.perf_counter() - t0
            f = lambda s_, t_: float(np.abs(s_ * pred.astype(np.float64) + t_ - gt).sum())  # noqa: E731
            row["objective_exact"] = f(s, t)
            row["objective_adam"] = f(sa, ta)
            row["objective_gap_rel"] = (row["objective_adam"] - row["objective_exact"]) / row["objective_exact"]
        rows.append(row)
        print(f"{n:>10,d} px  exact fit {exact_s:7.2f} s   Adam step {step_s * 1e3:7.1f} ms "
              f"(5000 steps ≈ {5000 * step_s:7.1f} s)" + (f"   Adam loop {row['adam_loop_s']:.1f} s, objective "
                                                         f"+{100 * row['objective_gap_rel']:.4f} % over exact"
                                                         if "adam_loop_s" in row else ""))
    return rows


def bench_poses(n: int = 1000) -> dict:
    from scipy.spatial.transform import Rotation

    from geo4d.metrics import pose_metrics
    from geo4d.metrics.trajectory import Trajectory, evaluate_tum_files, evaluate_tum_files_evo, write_tum_trajectory

    rng = np.random.default_rng(1)
    gt = np.tile(np.eye(4), (n, 1, 1))
    gt[:, :3, :3] = Rotation.from_rotvec(np.cumsum(rng.normal(0, 0.02, (n, 3)), 0)).as_matrix()
    gt[:, :3, 3] = np.cumsum(rng.normal(0, 0.05, (n, 3)), 0)
    est = gt.copy()
    est[:, :3, 3] = 0.5 * est[:, :3, 3] + rng.normal(0, 0.01, (n, 3))
    est[:, :3, :3] = est[:, :3, :3] @ Rotation.from_rotvec(rng.normal(0, 0.005, (n, 3))).as_matrix()
    t0 = time.perf_counter()
    for _ in range(5):
        pose_metrics(est, gt)
    arrays_s = (time.perf_counter() - t0) / 5
    with tempfile.TemporaryDirectory() as d:
        stamps = np.arange(n) / 30.0
        write_tum_trajectory(Path(d) / "gt.txt", Trajectory.from_poses(stamps, gt))
        write_tum_trajectory(Path(d) / "est.txt", Trajectory.from_poses(stamps + 0.002, est))
        t0 = time.perf_counter()
        ours = evaluate_tum_files(Path(d) / "gt.txt", Path(d) / "est.txt")
        files_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        evo = evaluate_tum_files_evo(Path(d) / "gt.txt", Path(d) / "est.txt")
        evo_s = time.perf_counter() - t0
    rel = max(abs(ours[k] - evo[k]) / abs(evo[k]) for k in ("ate", "rpe_trans", "rpe_rot"))
    print(f"poses ({n}): pose_metrics {arrays_s * 1e3:.1f} ms, TUM files {files_s * 1e3:.1f} ms, "
          f"evo {evo_s * 1e3:.1f} ms (first call includes evo's import); max relative difference {rel:.1e}")
    return {"poses": n, "pose_metrics_s": arrays_s, "tum_files_s": files_s, "evo_s": evo_s, "max_rel_diff_vs_evo": rel}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 M and 5 M pixels only")
    args = ap.parse_args()
    sizes = [1_000_000, 5_000_000] + ([] if args.quick else [22_000_000])
    depth = bench_depth(sizes)
    poses = bench_poses()
    import os

    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
           "depth_alignment": depth, "poses": poses}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(res, indent=2))
    md = ["# Evaluation metrics benchmark", "", f"Machine: {res['machine']['platform']}, {res['machine']['cpus']} CPUs "
          "(CPU only; timings noisy when other work runs).", "",
          "| valid pixels | exact L1 fit (s) | Adam step (ms) | 5000 Adam steps (s, extrapolated) |", "|---|---|---|---|"]
    for r in depth:
        md.append(f"| {r['pixels']:,} | {r['exact_fit_s']:.2f} | {1e3 * r['adam_step_s']:.1f} | {r['adam_5000_steps_s']:.0f} |")
    gap = next((r for r in depth if "objective_gap_rel" in r), None)
    if gap:
        md += ["", f"1 M pixels, Sintel/Bonn settings: the Adam loop took {gap['adam_loop_s']:.1f} s and ended "
                   f"{100 * gap['objective_gap_rel']:.4f} % above the exact L1 optimum."]
    md += ["", f"Poses ({poses['poses']} poses): `pose_metrics` {1e3 * poses['pose_metrics_s']:.1f} ms; from TUM files "
               f"{1e3 * poses['tum_files_s']:.1f} ms; through evo {1e3 * poses['evo_s']:.1f} ms; largest relative "
               f"difference to evo {poses['max_rel_diff_vs_evo']:.1e}.", ""]
    (out / "metrics.md").write_text("\n".join(md))
    print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
