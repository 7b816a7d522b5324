"""``geo4d demo``: synthesise a scene, reconstruct it through the Prefect flow, report.

The predictions come from the SYNTHETIC predictor (a test instrument derived from ground truth, with
realistic ambiguities and noise), so the demo runs in about a minute on a CPU and its metrics show
what the fusion recovers; it is not a demonstration of the network.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

DEMO_NOISE = {"depth_noise": 0.03, "pose_jitter_deg": 0.3}


def run_demo(workdir: Path, frames: int = 48, height: int = 160, width: int = 256, seed: int = 0) -> int:
    from geo4d.formats.ply import write_ply
    from geo4d_cli.prefect_server import prefect_env
    from geo4d.report import format_metrics_table, write_summary_png
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import read_ground_truth, write_ground_truth
    from storage.store import Store

    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    name = f"demo_scene_{seed}"
    video = data / f"{name}.mp4"
    t0 = time.perf_counter()
    print(f"[1/4] synthesising a dynamic scene: {frames} frames at {width}×{height} → {video}")
    rendered = render(make_scene(seed=seed, n_frames=frames, height=height, width=width))
    write_video(video, rendered.frames, fps=10)
    write_ground_truth(data / f"{name}.gt", rendered.geometry)

    print("[2/4] reconstructing with Prefect (a temporary local server): decode → windows → fuse → evaluate")
    print(f"      predictor: SYNTHETIC test instrument (ground truth + unknown gauges + noise {DEMO_NOISE})")
    if "PREFECT_API_URL" not in os.environ:  # the demo's own database: no contention with other runs
        os.environ.setdefault("PREFECT_HOME", str((workdir / ".prefect").resolve()))
    prefect_env()  # as `geo4d reconstruct`: quiet logs, console progress, the server's longer start-up
    from flows.reconstruct import reconstruct_video

    store_path = workdir / "store.zarr"
    result = reconstruct_video(str(video), str(store_path), predictor={"kind": "synthetic", "noise": DEMO_NOISE, "seed": seed})
    vid = result["video_id"]
    for stage in ("decode", "windows", "fuse", "evaluate"):
        r = result[stage]
        state = "skipped (complete)" if r["skipped"] else f"{r['seconds']:.2f} s"
        print(f"      {stage:<9} {state}")

    print("[3/4] metrics against ground truth")
    metrics = result["evaluate"]["details"]["metrics"]
    print(format_metrics_table({vid: metrics}))

    print("[4/4] writing the report")
    report = workdir / "report"
    report.mkdir(exist_ok=True)
    store = Store(store_path, mode="r")
    fused = store.read_fused(vid)
    rgb = store.read_frames(vid)
    gt = read_ground_truth(data / f"{name}.gt")
    write_summary_png(report / "summary.png", rgb, fused.depth, fused.confidence, fused.world_from_cam,
                      gt.world_from_cam, title=f"{vid} — synthetic predictor (test instrument)")
    valid = fused.valid
    step = max(1, frames // 12)
    sel = np.zeros_like(valid)
    sel[::step] = valid[::step]
    n = write_ply(report / "points.ply", fused.points[sel], rgb[sel])
    (report / "metrics.json").write_text(json.dumps({"video_id": vid, "predictor": "synthetic", "metrics": metrics}, indent=2))
    print(f"      {report / 'summary.png'}\n      {report / 'points.ply'} ({n} points)\n      {report / 'metrics.json'}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
