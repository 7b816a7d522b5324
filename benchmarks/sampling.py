"""Sampling throughput: official-style inference vs this project's fast path, in one run.

(a) the tiny fixture config (random weights) on CPU, float32;
(b) the full-size config (random weights) on a CUDA GPU when one is available.

Official style = what the official script does per window: encode every frame of the window (so each
frame is encoded once per window containing it), one window at a time, frame-by-frame VAE calls,
float32. Ours = :meth:`Geo4DPredictor.decoded_windows`: each frame encoded once per video, several
windows per U-Net call, batched per-frame decoding, bf16 autocast on GPU (and SDPA attention in both).
Both produce the decoded 11-channel windows (post-processing excluded: identical in both).

Each timed run is its own subprocess (after one warm-up run) so its peak memory is its own (CPU: peak
RSS of the process, which includes the Python/torch baseline, also reported; GPU:
``torch.cuda.max_memory_allocated``); the variants alternate and figures are medians over ``--repeats``. ``--load-memory`` additionally writes a random full-size
``model.ckpt`` (6.5 GB, float32, no CLIP) to a temporary directory and measures the peak RSS of
``load_official`` on it.

Writes ``benchmarks/results/sampling.json`` and ``sampling.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "geo4d-reference"
RESULTS = ROOT / "benchmarks" / "results"


def _tiny_config() -> dict:
    """The tiny fixture config if present, else an equivalent small config (same schema)."""
    import yaml

    path = SHARED / "fixtures" / "tiny" / "config.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text())
    raw = yaml.safe_load((SHARED / "official_inference_geo4d.yaml").read_text())  # pragma: no cover
    return raw


def _starts(T: int, size: int, stride: int) -> list[int]:
    from geo4d.windows import window_starts

    return [int(s) for s in window_starts(T, size, stride)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args) -> dict:
    """Run one variant in this process and return its figures."""
    import numpy as np
    import torch

    from geo4d_model.loader import build_random
    from geo4d_model.predictor import Geo4DPredictor

    torch.set_grad_enabled(False)
    baseline = _peak_rss_mb()
    device = torch.device(args.device)
    if args.scale == "tiny":
        cfg = _tiny_config()
        image_size, T = (64, 96), 16
    else:
        cfg = str(SHARED / "official_inference_geo4d.yaml")
        image_size, T = (320, 512), 40
    net, pm = build_random(cfg, device=device, dtype=torch.float32)
    V = net.cfg.unet.temporal_length
    L = 77 + net.cfg.resampler.num_queries * (net.cfg.resampler.video_length or 1)
    context = torch.randn(1, L, net.cfg.unet.context_dim, device=device) * 0.5
    official = args.variant == "official"
    pred = Geo4DPredictor(
        net, pm, context, image_size=image_size, fast=not official,
        window_batch=args.window_batch, vae_batch=args.vae_batch,
        autocast=None if official else "auto", compile=args.compile and not official,
    )
    stride = max(1, V // 4)  # official: 16-frame windows, stride 4 → every frame in 4 windows
    starts = _starts(T, V, stride)
    video = np.random.default_rng(0).integers(0, 256, size=(T, *image_size, 3), dtype=np.uint8)

    def run():
        if official:
            for s in starts:
                pred.decode_window_plain(video[s : s + V], s)
        else:
            for _ in pred.decoded_windows(video, starts, V):
                pass
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run()  # warm-up (and compile)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = {
        "variant": args.variant, "scale": args.scale, "device": str(device), "frames": T, "window": V,
        "stride": stride, "windows": len(starts), "image_size": list(image_size), "repeats": args.repeats,
        "seconds_median": med, "seconds_all": times, "windows_per_s": len(starts) / med,
        "window_batch": None if official else args.window_batch, "vae_batch": 1 if official else args.vae_batch,
        "autocast": None if official or pred.autocast_dtype is None else str(pred.autocast_dtype),
        "compile": bool(args.compile and not official), "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    out["peak_rss_mb"] = _peak_rss_mb()
    out["baseline_rss_mb"] = baseline
    return out


def load_memory_worker(path: str, config: str) -> dict:
    import torch

    from geo4d_model.loader import load_official

    base = _peak_rss_mb()
    t0 = time.perf_counter()
    loaded = load_official(config, path, device="cpu", dtype=torch.float32)
    elapsed = time.perf_counter() - t0
    after_load = _peak_rss_mb()
    # read every weight once (what the first forward pass does): the mmapped pages become resident
    with torch.no_grad():
        for p in loaded.network.parameters():
            p.abs().max()
    return {"baseline_rss_mb": base, "peak_rss_after_load_mb": after_load, "peak_rss_after_touch_mb": _peak_rss_mb(),
            "load_seconds": elapsed, "file_gb": os.path.getsize(path) / 1e9}


def measure_load_memory() -> dict:
    """Write a random full-size model.ckpt (no CLIP) and measure load_official's peak RSS in a subprocess."""
    config = str(SHARED / "official_inference_geo4d.yaml")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        ckpt = Path(tmp) / "model.ckpt"
        code = (
            "from geo4d_model.loader import build_random, save_official\n"
            f"net,_=build_random({config!r}, with_pointmap_vae=False)\n"
            f"save_official(net, {str(ckpt)!r})\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        res = subprocess.run([sys.executable, __file__, "--load-memory-worker", str(ckpt)], check=True, cwd=ROOT,
                             capture_output=True, text=True)
        return json.loads(res.stdout.strip().splitlines()[-1])


def _run_variant(variant: str, scale: str, device: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--scale", scale, "--device", device,
           "--repeats", str(args.repeats), "--window-batch", str(args.window_batch), "--vae-batch", str(args.vae_batch)]
    if args.compile:
        cmd.append("--compile")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{variant}/{scale} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _interleaved(scale: str, device: str, args) -> dict:
    """Alternate the two variants (one timed run per subprocess) so that load from other processes on a
    shared machine affects both alike; medians over the repeats, peak memory = max over runs."""
    runs: dict[str, list[dict]] = {"official": [], "ours": []}
    one = argparse.Namespace(**{**vars(args), "repeats": 1})
    for _ in range(args.repeats):
        for v in runs:
            runs[v].append(_run_variant(v, scale, device, one))
    out = {}
    for v, rs in runs.items():
        r = dict(rs[0])
        r["seconds_all"] = [x["seconds_median"] for x in rs]
        r["seconds_median"] = statistics.median(r["seconds_all"])
        r["windows_per_s"] = r["windows"] / r["seconds_median"]
        r["repeats"] = len(rs)
        for k in ("peak_rss_mb", "peak_gpu_mb"):
            if k in r:
                r[k] = max(x[k] for x in rs)
        out[v] = r
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--window-batch", type=int, default=4)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net on the fast path")
    p.add_argument("--load-memory", action="store_true", help="also measure load_official's peak RSS (full size)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--load-memory-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="official", help=argparse.SUPPRESS)
    p.add_argument("--scale", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.load_memory_worker:
        print(json.dumps(load_memory_worker(args.load_memory_worker, str(SHARED / "official_inference_geo4d.yaml"))))
        return 0

    import torch

    results: dict = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                     "cpu_count": os.cpu_count(), "note": "random weights; decoded windows (post-processing excluded)"}
    tiny = _interleaved("tiny", "cpu", args)
    tiny["speedup"] = tiny["ours"]["windows_per_s"] / tiny["official"]["windows_per_s"]
    results["tiny_cpu"] = tiny
    if torch.cuda.is_available():
        full = _interleaved("full", "cuda", args)
        full["speedup"] = full["ours"]["windows_per_s"] / full["official"]["windows_per_s"]
        results["full_gpu"] = full
    else:
        results["full_gpu"] = "skipped: no CUDA device"
    if args.load_memory:
        results["load_memory_full_cpu"] = measure_load_memory()
    elif (RESULTS / "sampling.json").is_file():  # keep an earlier measurement
        old = json.loads((RESULTS / "sampling.json").read_text())
        if "load_memory_full_cpu" in old:
            results["load_memory_full_cpu"] = old["load_memory_full_cpu"]

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sampling.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["# Sampling benchmark", "",
          f"torch {results['torch']}, {results['cpu_count']} CPU cores; random weights; decoded windows "
          "(post-processing excluded); medians over repeats.", "",
          "| scale | device | variant | windows | s (median) | windows/s | peak memory |",
          "|---|---|---|---|---|---|---|"]

    def row(r):
        mem = (f"{r['peak_gpu_mb']:.0f} MB GPU" if "peak_gpu_mb" in r
               else f"{r['peak_rss_mb']:.0f} MB RSS (baseline {r['baseline_rss_mb']:.0f})")
        return (f"| {r['scale']} | {r['device']} | {r['variant']} | {r['windows']} | {r['seconds_median']:.2f} | "
                f"{r['windows_per_s']:.2f} | {mem} |")

    md += [row(tiny["official"]), row(tiny["ours"]), "", f"tiny CPU speed-up: ×{tiny['speedup']:.2f}", ""]
    if isinstance(results["full_gpu"], dict):
        md += [row(results["full_gpu"]["official"]), row(results["full_gpu"]["ours"]), "",
               f"full-size GPU speed-up: ×{results['full_gpu']['speedup']:.2f}", ""]
    else:
        md += [f"full-size GPU: {results['full_gpu']}", ""]
    if "load_memory_full_cpu" in results:
        m = results["load_memory_full_cpu"]
        md += [f"load_official on a random full-size model.ckpt ({m['file_gb']:.2f} GB, float32, no CLIP): "
               f"peak RSS {m['peak_rss_after_load_mb']:.0f} MB after loading (mmap, pages not yet touched), "
               f"{m['peak_rss_after_touch_mb']:.0f} MB after touching every weight; baseline "
               f"{m['baseline_rss_mb']:.0f} MB; {m['load_seconds']:.1f} s.", ""]
    (RESULTS / "sampling.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
