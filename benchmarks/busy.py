"""Keeping the accelerator busy: the fast path with ``overlap`` off vs on, with a realistic consumer.

The full-size Geo4D config with random weights (``build_random``, bfloat16, ≈ 3.3 GB) on CPU at a small
frame size (64×64 by default), a 24-frame video = 3 windows of 16 (stride 4), ``window_batch`` 1, the
official post-processing, and the windows stage's consumer: every :class:`WindowPrediction` written
into a Zarr store with :meth:`storage.store.Store.write_window` after ``prepare_windows``.

The network's calls — ``network.unet.forward``, ``network.encode_frames``, ``network.decode_window`` —
are wrapped with timers; "device time" is the part of the video's wall time covered by those calls
(the union of their intervals: with overlap on, post-processing and writes run beside them), and the
"outside" fraction is ``(wall − device time) / wall``: the time the accelerator would sit idle.

Variants, alternating, one timed video each per round (medians over ``--repeats`` rounds, after one
warm-up video):

* ``off``: ``overlap=False``, everything in the caller's (main) thread, as before;
* ``on``: ``overlap=True`` (device loop and post-processing in background threads);
* ``off-thread``: ``overlap=False`` but the whole consumer loop in one worker thread — a control for
  the speed of CPU kernels in a non-main thread, which differs from the main thread's on the loaded
  development machine (the tiny fixture's float32 network ran up to ~10× faster in a worker thread,
  a glibc-malloc effect: raising ``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_`` removed it;
  here, full size in bf16, a few percent slower) and would otherwise be credited to the overlap.

Writes ``benchmarks/results/busy.json`` and ``busy.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "geo4d-reference"
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ("off", "on", "off-thread")


class CallTimer:
    """Records the (start, end) perf_counter interval of every call of the wrapped methods."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []

    def wrap(self, obj, name: str) -> None:
        """Replace ``obj.name`` by a timed version (an instance attribute shadowing the method)."""
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.spans.append((t0, time.perf_counter()))  # list.append is atomic under the GIL

        setattr(obj, name, timed)

    def covered(self, t0: float, t1: float) -> float:
        """Seconds of [t0, t1] inside at least one recorded call (union of the intervals; nested calls
        — ``encode_frames`` inside nothing, ``unet.forward`` inside nothing — are counted once)."""
        total, end = 0.0, t0
        for a, b in sorted(self.spans):
            a, b = max(a, end), min(b, t1)
            if b > a:
                total += b - a
                end = b
        return total


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(args):
    """Full-size random-weight network in bfloat16 on CPU, its constant context, and the timer."""
    import torch

    from geo4d_model.loader import build_random

    net, pm = build_random(str(SHARED / "official_inference_geo4d.yaml"), dtype=torch.bfloat16)
    L = 77 + net.cfg.resampler.num_queries * (net.cfg.resampler.video_length or 1)
    gen = torch.Generator().manual_seed(0)
    context = torch.randn(1, L, net.cfg.unet.context_dim, generator=gen) * 0.5
    timer = CallTimer()
    timer.wrap(net.unet, "forward")
    timer.wrap(net, "encode_frames")
    timer.wrap(net, "decode_window")
    return net, pm, context, timer


def _store(tmp: str, name: str, T: int, size: int, starts: list[int], V: int, stride: int):
    """A fresh store holding one video of T frames of size×size with its windows arrays prepared."""
    from storage.store import Store, VideoInfo

    store = Store(Path(tmp) / f"{name}.zarr")
    store.ensure_video(VideoInfo("busy-bench", "synthetic", T, size, size, 24.0))
    store.prepare_windows("busy-bench", starts, V, stride, "geo4d", name)
    return store


def one_video(pred, video, starts: list[int], V: int, store, timer: CallTimer, variant: str, post_spans) -> dict:
    """Predict and store every window of ``video`` once; the figures of that run."""
    write_s = [0.0]
    errors: list[BaseException] = []

    def consume():
        try:
            for g, p in pred.predict_windows(video, starts, V):
                t = time.perf_counter()
                store.write_window("busy-bench", g, p)
                write_s[0] += time.perf_counter() - t
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    timer.spans.clear()
    post_spans.clear()
    pred.overlap = variant == "on"
    t0 = time.perf_counter()
    if variant == "off-thread":
        worker = threading.Thread(target=consume)
        worker.start()
        worker.join()
    else:
        consume()
    t1 = time.perf_counter()
    if errors:
        raise errors[0]
    wall, device = t1 - t0, timer.covered(t0, t1)
    return {"variant": variant, "wall_s": wall, "device_s": device, "outside_s": wall - device,
            "outside_fraction": (wall - device) / wall, "calls_sum_s": sum(b - a for a, b in timer.spans),
            "postprocess_s": sum(b - a for a, b in post_spans), "write_s": write_s[0]}


def _median_row(rs: list[dict]) -> dict:
    keys = ("wall_s", "device_s", "outside_s", "outside_fraction", "calls_sum_s", "postprocess_s", "write_s")
    return {"variant": rs[0]["variant"], "runs": len(rs), **{k: statistics.median(r[k] for r in rs) for k in keys},
            "wall_all_s": [r["wall_s"] for r in rs], "outside_fraction_all": [r["outside_fraction"] for r in rs]}


def measure(args) -> dict:
    """Warm-up, then ``args.repeats`` rounds of the variants in turn; medians per variant."""
    import numpy as np
    import torch

    from geo4d.windows import window_starts
    from geo4d_model.postprocess import postprocess_window
    from geo4d_model.predictor import Geo4DPredictor

    torch.set_grad_enabled(False)
    net, pm, context, timer = build(args)
    post_spans: list[tuple[float, float]] = []

    def timed_post(decoded, sky_eps=0.35):
        t0 = time.perf_counter()
        try:
            return postprocess_window(decoded, sky_eps=sky_eps)
        finally:
            post_spans.append((t0, time.perf_counter()))

    size, V, stride = args.size, net.cfg.unet.temporal_length, args.stride
    pred = Geo4DPredictor(net, pm, context, image_size=(size, size), window_batch=args.window_batch,
                          vae_batch=args.vae_batch, postprocess=timed_post)
    starts = [int(s) for s in window_starts(args.frames, V, stride)]
    video = np.random.default_rng(0).integers(0, 256, size=(args.frames, size, size, 3), dtype=np.uint8)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        one_video(pred, video, starts[:1], V, _store(tmp, "warmup", args.frames, size, starts[:1], V, stride),
                  timer, "off", post_spans)
        for r in range(args.repeats):
            for v in VARIANTS:
                store = _store(tmp, f"{v}-{r}", args.frames, size, starts, V, stride)
                runs[v].append(one_video(pred, video, starts, V, store, timer, v, post_spans))
                print(json.dumps(runs[v][-1]), file=sys.stderr, flush=True)
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "frames": args.frames, "image_size": [size, size],
            "window": V, "stride": stride, "windows": len(starts), "window_batch": args.window_batch,
            "vae_batch": args.vae_batch, "dtype": "bfloat16", "device": "cpu", "repeats": args.repeats,
            "peak_rss_mb": _peak_rss_mb(), "variants": {v: _median_row(rs) for v, rs in runs.items()},
            "runs": runs}


def markdown(res: dict) -> str:
    """The results table of ``busy.md``."""
    var = res["variants"]
    md = ["# Keeping the accelerator busy (`benchmarks/busy.py`)", "",
          f"Full-size Geo4D config, random weights, bfloat16, CPU ({res['cpu_count']} cores, torch {res['torch']}); "
          f"{res['frames']} frames of {res['image_size'][0]}×{res['image_size'][1]} = {res['windows']} windows of "
          f"{res['window']} (stride {res['stride']}), window_batch {res['window_batch']}; official post-processing; "
          f"each window written to a Zarr store. Medians over {res['repeats']} alternating runs per variant; "
          f"peak RSS {res['peak_rss_mb']:.0f} MB.", "",
          "| variant | wall s | in U-Net/VAE calls s | outside s | outside fraction | post-processing s | writes s |",
          "|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        r = var[v]
        md.append(f"| {v} | {r['wall_s']:.2f} | {r['device_s']:.2f} | {r['outside_s']:.2f} | "
                  f"{100 * r['outside_fraction']:.1f} % | {r['postprocess_s']:.2f} | {r['write_s']:.2f} |")
    md += ["", "`off`: overlap off, all in the caller's thread (before); `on`: overlap on (after); `off-thread`: "
           "overlap off with the consumer loop in a worker thread (control for the thread's own effect on CPU "
           "kernel speed). \"outside\" = wall − the time covered by U-Net/VAE calls.", ""]
    return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=64, help="frame height = width")
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--window-batch", type=int, default=1)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--no-write", action="store_true", help="print only; keep benchmarks/results as they are")
    args = p.parse_args(argv)
    res = measure(args)
    md = markdown(res)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "busy.json").write_text(json.dumps(res, indent=2) + "\n")
        (RESULTS / "busy.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
