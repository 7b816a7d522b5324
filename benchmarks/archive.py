"""Archive throughput and orchestration overhead with the synthetic predictor (a test instrument).

For 1 and 2 local Dask workers: videos/minute, each stage's share of the stage time, and the
orchestration overhead per video — the part of a video's task that is not stage work (Prefect task
machinery, store opening, records) — as a share of the task. The run's fixed start-up (Prefect's
temporary API, the Dask cluster) is reported separately. Writes benchmarks/results/archive.{json,md}.

    python benchmarks/archive.py [--videos 6] [--frames 48] [--height 96] [--width 128]
    python benchmarks/archive.py --network [--videos 4] [--frames 16] [--size 64]   # benchmarks/archive_network.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--network", action="store_true",
                    help="the full-size network with random weights instead (benchmarks/archive_network.py)")
    ap.add_argument("--size", type=int, default=64, help="--network: square frame size (a multiple of 64)")
    return ap.parse_args()


def main() -> None:
    a = _args()
    if a.network:
        sys.path.insert(0, str(Path(__file__).parent))
        from archive_network import main as network_main

        a.videos, a.frames = (4 if a.videos == 6 else a.videos), (16 if a.frames == 48 else a.frames)
        network_main(a)
        return
    work = Path(tempfile.mkdtemp(prefix="geo4d-bench-archive-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect_dask import DaskTaskRunner

    from flows.archive import reconstruct_archive
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth

    src = work / "videos"
    src.mkdir()
    for i in range(a.videos):
        r = render(make_scene(seed=100 + i, n_frames=a.frames, height=a.height, width=a.width))
        write_video(src / f"v{i}.mp4", r.frames, fps=10)
        write_ground_truth(src / f"v{i}.gt", r.geometry)
    # Warm the temporary Prefect API once so its start-up is measured on its own.
    t0 = time.perf_counter()
    reconstruct_archive.with_options(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "processes": False, "dashboard_address": None}))(
        [str(src / "v0.mp4")], str(work / "warm.zarr"), evaluate=False)
    warm = time.perf_counter() - t0
    rows = []
    for workers in (1, 2):
        store = work / f"w{workers}.zarr"
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": False,
                                                "dashboard_address": None})
        t0 = time.perf_counter()
        res = reconstruct_archive.with_options(task_runner=runner)([str(src)], str(store))
        wall = time.perf_counter() - t0
        vids = res["videos"]
        stage_tot = {s: sum(v["seconds"].get(s, 0.0) for v in vids) for s in ("decode", "windows", "fuse", "evaluate")}
        all_stages = sum(stage_tot.values())
        overhead = [1 - sum(v["seconds"].values()) / v["task_seconds"] for v in vids]
        per_video_wall = wall * workers / len(vids)
        rows.append({
            "workers": workers, "videos": len(vids), "complete": res["complete"], "wall_s": round(wall, 2),
            "videos_per_minute": round(60 * len(vids) / wall, 2),
            "stage_share": {s: round(t / all_stages, 3) for s, t in stage_tot.items()},
            "median_video_task_s": round(statistics.median(v["task_seconds"] for v in vids), 3),
            "in_task_overhead_share_median": round(statistics.median(overhead), 4),
            "run_overhead_share": round(1 - all_stages / (wall * workers), 4),
            "per_video_worker_seconds": round(per_video_wall, 3),
        })
        print(json.dumps(rows[-1]))
    out = {"machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
           "predictor": "synthetic (test instrument)", "frames": a.frames, "size": [a.height, a.width],
           "prefect_first_run_s": round(warm, 2), "runs": rows,
           "speedup_2_over_1": round(rows[1]["videos_per_minute"] / rows[0]["videos_per_minute"], 2)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "archive.json").write_text(json.dumps(out, indent=2))
    md = [f"# Archive benchmark ({a.videos} videos × {a.frames} frames at {a.width}×{a.height}, synthetic predictor — a test instrument)", "",
          f"Machine: {out['machine']}. Generated by `benchmarks/archive.py`. First flow in a fresh process "
          f"(temporary Prefect API + cluster start-up, 1 video): {warm:.1f} s.", "",
          "| workers | videos/min | wall (s) | median video task (s) | decode | windows | fuse | evaluate | in-task overhead | run overhead |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sh = r["stage_share"]
        md.append(f"| {r['workers']} | {r['videos_per_minute']} | {r['wall_s']} | {r['median_video_task_s']} | "
                  f"{sh['decode']:.0%} | {sh['windows']:.0%} | {sh['fuse']:.0%} | {sh['evaluate']:.0%} | "
                  f"{r['in_task_overhead_share_median']:.1%} | {r['run_overhead_share']:.1%} |")
    md += ["", f"2 workers / 1 worker throughput: {out['speedup_2_over_1']}×.", "",
           "*In-task overhead*: the share of a video's task that is not stage work (store opening, records, "
           "Prefect task machinery inside the worker). *Run overhead*: 1 − stage time / (wall × workers), "
           "which also counts the run's start-up, task submission and idle workers at the end of the queue."]
    (RESULTS / "archive.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
