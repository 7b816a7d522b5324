"""Speed of synthetic test data: scene rendering, H.264 writing, ground-truth writing, and the
synthetic predictor per window.

Target (issue 2): 48 frames at 256×160 rendered "in a few seconds" on the 2-core development machine.

    .venv/bin/python benchmarks/synthetic_render.py [--frames 48 --height 160 --width 256 --repeat 3]

Prints the figures and writes benchmarks/results/synthetic_render.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--height", type=int, default=160)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from geo4d.synthetic import make_scene, render, write_video
    from geo4d.synthetic_predictor import SyntheticNoise, SyntheticPredictor
    from geo4d.windows import window_starts
    from storage.ground_truth import read_ground_truth, write_ground_truth

    T, H, W = args.frames, args.height, args.width
    make_scene(args.seed, 2, 16, 16)  # warm imports (scipy)
    t_scene, scene = _best(lambda: make_scene(args.seed, T, H, W), args.repeat)
    t_render, r = _best(lambda: render(scene), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        t_video, _ = _best(lambda: write_video(Path(tmp) / "v.mp4", r.frames, fps=10), args.repeat)
        t_gt_w, _ = _best(lambda: write_ground_truth(Path(tmp) / "v.gt", r.geometry), args.repeat)
        t_gt_r, gt = _best(lambda: read_ground_truth(Path(tmp) / "v.gt"), args.repeat)
    starts = window_starts(T)
    frames = np.zeros((16, H, W, 3), np.uint8)
    clean = SyntheticPredictor(gt, seed=0)
    noisy = SyntheticPredictor(gt, noise=SyntheticNoise(depth_noise=0.05, pose_jitter_deg=0.5, corrupt_windows=1), seed=0)
    t_clean, _ = _best(lambda: [clean.predict_window(frames, s) for s in starts], args.repeat)
    t_noisy, _ = _best(lambda: [noisy.predict_window(frames, s) for s in starts], args.repeat)

    res = {
        "size": {"frames": T, "height": H, "width": W},
        "seconds": {
            "make_scene": round(t_scene, 4),
            "render": round(t_render, 4),
            "write_video_h264": round(t_video, 4),
            "write_ground_truth": round(t_gt_w, 4),
            "read_ground_truth": round(t_gt_r, 4),
            "synthetic_predictor_per_window_clean": round(t_clean / len(starts), 4),
            "synthetic_predictor_per_window_noisy": round(t_noisy / len(starts), 4),
        },
        "render_frames_per_second": round(T / t_render, 1),
        "windows": len(starts),
        "repeat": args.repeat,
        "best_of_repeat": True,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    print(json.dumps(res, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "synthetic_render.json").write_text(json.dumps(res, indent=2) + "\n")
    s = res["seconds"]
    md = [
        "# Synthetic data speed",
        "",
        f"{T} frames at {W}×{H} (W×H), best of {args.repeat}, {os.cpu_count()} CPUs "
        "(`benchmarks/synthetic_render.py`).",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in s.items()],
        "",
        f"Rendering: {res['render_frames_per_second']} frames/s. Target: 48 frames at 256×160 in a few seconds.",
        "",
    ]
    (out / "synthetic_render.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
