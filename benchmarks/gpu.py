"""GPU throughput of the full-size Geo4D network (random weights): official-style vs ours, one command.

Built for one H100/H200 within 8 minutes (``--budget-s``, default 420 s, is a global deadline from the
start of the script: variants not started by then are reported as skipped).

* Model: the full-size config with random weights, built on ``meta`` and materialised directly on the
  GPU (:func:`geo4d_model.loader.build_random`), float32 weights (``Geo4DPredictorSpec``'s default).
* Load time: the model is written once with :func:`~geo4d_model.loader.save_official` (float32, no CLIP,
  the official layout) to a temporary directory, then ``load_official(..., device="cuda",
  dtype=torch.bfloat16)`` is timed (the file was just written, so it is read from the page cache).
* Variants, each warmed up once, then timed once over a short video (``--windows`` windows of 16 frames,
  stride 4; at least ``window_batch`` windows):
  ``official`` = the official script's way: float32, autocast off, each window's 16 frames encoded for
  that window, one window per U-Net call, frame-by-frame VAE calls (``Geo4DPredictor(fast=False)`` /
  ``decode_window_plain``);
  ``ours_wb{1,2,4,8}[_compile]`` = :meth:`Geo4DPredictor.decoded_windows`: bf16 autocast over the float32
  weights, each frame encoded once per video, ``window_batch`` windows per U-Net call, per-frame decodes
  batched (``vae_batch`` 16), ``torch.compile`` of the U-Net off/on.
  Timed: decoded windows (encode + 5 DDIM steps + decode + copy to the host); post-processing excluded.
  frames/s = windows/s × stride (each window advances the video by ``stride`` frames in steady state).
  Peak GPU memory = ``torch.cuda.max_memory_allocated`` (reset per variant; includes the resident weights).
* FLOPs: counted with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (same code, no
  data, no GPU needed): VAE encode per frame, one U-Net call (× steps), the four-modality decode of a
  window. Per window: official = 16 encoded frames + U-Net + decode; ours = ``stride`` newly encoded
  frames + U-Net + decode. Achieved TFLOP/s = the counted FLOPs of the timed run / its seconds.
* Peak: dense bf16 TFLOP/s from a table by device name (H100 SXM and H200: 989; H100 PCIe 756; A100
  312) or ``--peak-tflops`` (the issue's conservative figure is 790).
* Targets (ok/FAIL): best ours frames/s ≥ 10 × official; best ours achieved ≥ 50 % of the peak (the
  FLOP floor, FLOPs per window / peak, is then within 2× of the time per window).

Writes ``benchmarks/results/gpu.json`` and ``gpu.md``; without CUDA it writes them with "not run: no GPU"
(and the FLOP counts, which need no GPU) and exits 0. ``--smoke``: the same code paths on CPU with the
tiny fixture config (float32, 16×16, 2 windows per variant, 1 thread, compile variants skipped), printed, nothing written.
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
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "geo4d-reference"
RESULTS = ROOT / "benchmarks" / "results"
FULL_CONFIG = SHARED / "official_inference_geo4d.yaml"
TINY_CONFIG = SHARED / "fixtures" / "tiny" / "config.yaml"
#: Dense bf16 tensor-core peak (TFLOP/s) by device-name substring, most specific first.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0))
#: (name, window_batch, compile) of every variant, in report order; window_batch None = official style.
VARIANTS = [("official", None, False)] + [(f"ours_wb{b}", b, False) for b in (1, 2, 4, 8)] + [
    (f"ours_wb{b}_compile", b, True) for b in (1, 2, 4, 8)]
#: Order in which variants are run when the budget may not cover them all (most informative first).
RUN_ORDER = ["official", "ours_wb4", "ours_wb1", "ours_wb2", "ours_wb8", "ours_wb4_compile", "ours_wb8_compile",
             "ours_wb1_compile", "ours_wb2_compile"]


def peak_tflops(device_name: str, override: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, where it came from) for a device name; None when unknown.

    >>> peak_tflops("NVIDIA H200")
    (989.0, 'table: H200')
    >>> peak_tflops("NVIDIA H100 PCIe", 790.0)
    (790.0, '--peak-tflops')
    """
    if override is not None:
        return float(override), "--peak-tflops"
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value, f"table: {key}"
    return None, f"unknown device {device_name!r}: pass --peak-tflops"


def count_flops(config, image_size: tuple[int, int], stride: int, steps: int = 5) -> dict:
    """FLOPs of one window's pieces, counted with ``FlopCounterMode`` on the meta device.

    Returns ``encode_per_frame`` (VAE encode of one (3, H, W) frame), ``unet_per_call`` (one U-Net call on
    (1, 20, V, h, w)), ``unet_per_window`` (× ``steps``), ``decode_per_window`` (the four modalities of V
    frames), ``official_per_window`` / ``ours_per_window`` (V resp. ``stride`` encoded frames + U-Net +
    decode) and the U-Net/encode/decode shares of ours.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from geo4d_model.loader import build_network

    net, pm = build_network(config, "meta")
    net.eval()
    pm.eval()
    H, W = image_size
    f = net.cfg.first_stage.downsample_factor
    V, C = net.cfg.unet.temporal_length, net.cfg.unet.context_dim
    L = 77 + net.cfg.resampler.num_queries * (net.cfg.resampler.video_length or 1)
    meta = dict(device="meta")

    def counted(fn) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            fn()
        return int(fc.get_total_flops())

    enc = counted(lambda: net.encode_frames(torch.zeros(1, 3, H, W, **meta)))
    unet = counted(lambda: net.unet(torch.zeros(1, 20, V, H // f, W // f, **meta), torch.zeros(1, dtype=torch.long, **meta),
                                    torch.zeros(1, L, C, **meta), torch.full((1,), 24, dtype=torch.long, **meta)))
    dec = counted(lambda: net.decode_window(torch.zeros(1, 16, V, H // f, W // f, **meta), pm, batch=16))
    ours = stride * enc + steps * unet + dec
    return {"encode_per_frame": enc, "unet_per_call": unet, "steps": steps, "unet_per_window": steps * unet,
            "decode_per_window": dec, "official_per_window": V * enc + steps * unet + dec, "ours_per_window": ours,
            "ours_split": {"unet": steps * unet / ours, "encode": stride * enc / ours, "decode": dec / ours},
            "image_size": list(image_size), "window": V, "stride": stride, "counted_on": "meta device"}


def build_model(config, device: torch.device, seed: int = 0):
    """Random-weight float32 network + point-map VAE on ``device`` and a context (1, L, C)."""
    from geo4d_model.loader import build_random

    net, pm = build_random(config, device=device, dtype=torch.float32, seed=seed)
    net.requires_grad_(False)
    pm.requires_grad_(False)
    L = 77 + net.cfg.resampler.num_queries * (net.cfg.resampler.video_length or 1)
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    context = (torch.randn(1, L, net.cfg.unet.context_dim, generator=gen) * 0.5).to(device)
    return net, pm, context


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(net, pm, context, variant: tuple, setup: dict, flops: dict) -> dict:
    """Warm up once and time one run of a variant over ``max(windows, window_batch)`` windows.

    ``setup``: ``image_size``, ``stride``, ``windows``, ``vae_batch``, ``autocast`` (ours), ``device``.
    Returns seconds, windows/s, frames/s (= windows/s × stride), peak memory, achieved TFLOP/s.
    """
    from geo4d_model.predictor import Geo4DPredictor

    name, wb, compile_ = variant
    official, device = wb is None, setup["device"]
    V, stride = flops["window"], setup["stride"]
    n = setup["windows"] if setup.get("fixed_windows") else max(setup["windows"], wb or 1)
    T = V + stride * (n - 1)
    starts = list(range(0, T - V + 1, stride))
    video = np.random.default_rng(0).integers(0, 256, size=(T, *setup["image_size"], 3), dtype=np.uint8)
    pred = Geo4DPredictor(net, pm, context, image_size=setup["image_size"], fast=not official,
                          window_batch=wb or 1, vae_batch=setup["vae_batch"],
                          autocast="off" if official else setup["autocast"], compile=compile_)

    def once() -> None:
        if official:
            for s in starts:
                pred.decode_window_plain(video[s : s + V], s)
        else:
            for _ in pred.decoded_windows(video, starts, V):
                pass
        _sync(device)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    once()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    once()
    sec = time.perf_counter() - t0
    encoded = n * V if official else T
    run_flops = encoded * flops["encode_per_frame"] + n * (flops["unet_per_window"] + flops["decode_per_window"])
    out = {"name": name, "official": official, "window_batch": wb, "compile": compile_,
           "autocast": "off" if pred.autocast_dtype is None else str(pred.autocast_dtype).removeprefix("torch."),
           "windows": n, "frames": T, "warmup_s": warm, "seconds": sec, "windows_per_s": n / sec,
           "frames_per_s": n * stride / sec, "achieved_tflops": run_flops / sec / 1e12}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_variants(net, pm, context, setup: dict, flops: dict, deadline: float, skip: dict | None = None) -> list[dict]:
    """Every variant of :data:`VARIANTS` in :data:`RUN_ORDER`; a variant is skipped (and says why) when
    the deadline has passed, when fewer than ``setup['compile_reserve_s']`` seconds are left for a
    compile variant, or when ``skip`` names it; a failure is recorded, not raised. Report order."""
    skip = skip or {}
    done: dict[str, dict] = {}
    for name in RUN_ORDER:
        variant = next(v for v in VARIANTS if v[0] == name)
        left = deadline - time.perf_counter()
        if name in skip:
            done[name] = {"name": name, "skipped": skip[name]}
        elif left <= 0:
            done[name] = {"name": name, "skipped": "budget spent"}
        elif variant[2] and left < setup["compile_reserve_s"]:
            done[name] = {"name": name, "skipped": f"{left:.0f} s left < {setup['compile_reserve_s']:.0f} s "
                                                   "reserved for a compile warm-up"}
        else:
            try:
                done[name] = time_variant(net, pm, context, variant, setup, flops)
            except Exception as exc:  # noqa: BLE001 - one failed variant must not lose the others' figures
                done[name] = {"name": name, "failed": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"{name}: {_brief(done[name])}", file=sys.stderr)
    return [done[v[0]] for v in VARIANTS]


def _brief(r: dict) -> str:
    if "seconds" not in r:
        return r.get("skipped") or r.get("failed", "")
    return f"{r['windows_per_s']:.3f} windows/s, {r['frames_per_s']:.2f} frames/s, {r['achieved_tflops']:.1f} TFLOP/s"


def time_load(net, pm, config, device: torch.device, tmp_dir: str | None = None) -> dict:
    """Write the model in the official layout (float32) and time ``load_official`` to ``device`` in bf16."""
    from geo4d_model.loader import load_official, save_official

    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        model, vae = Path(tmp) / "model.ckpt", Path(tmp) / "vae.ckpt"
        t0 = time.perf_counter()
        save_official(net, model, pm, vae)
        write_s = time.perf_counter() - t0
        size = model.stat().st_size + vae.stat().st_size
        t0 = time.perf_counter()
        loaded = load_official(config, model, vae, device=device, dtype=torch.bfloat16)
        _sync(device)
        load_s = time.perf_counter() - t0
        del loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"load_s": load_s, "write_s": write_s, "files_gb": size / 1e9, "dtype": "bfloat16",
            "note": "model.ckpt + vae.ckpt float32, no CLIP, just written (page cache warm)"}


def targets(variants: list[dict], peak: float | None) -> dict:
    """ok/FAIL of the two targets from the timed variants (None where not measurable)."""
    timed = [v for v in variants if "seconds" in v]
    off = next((v for v in timed if v["official"]), None)
    ours = [v for v in timed if not v["official"]]
    best = max(ours, key=lambda v: v["frames_per_s"], default=None)
    out: dict = {"best_ours": best["name"] if best else None}
    if best and off:
        x = best["frames_per_s"] / off["frames_per_s"]
        out["speedup"] = {"value": x, "target": 10.0, "ok": x >= 10.0}
    if best and peak:
        share = best["achieved_tflops"] / peak
        out["flop_floor_share"] = {"value": share, "target": 0.5, "ok": share >= 0.5}
    return out


def measure(args, device: torch.device, config, deadline: float) -> dict:
    """Everything of one run (the results record)."""
    flops = count_flops(config, (args.height, args.width), args.stride)
    t0 = time.perf_counter()
    net, pm, context = build_model(config, device)
    _sync(device)
    build_s = time.perf_counter() - t0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak, peak_source = peak_tflops(name, args.peak_tflops)
    rec = {"status": "ok", "device": name, "torch": torch.__version__, "build_s": build_s,
           "peak_tflops": peak, "peak_source": peak_source, "flops": flops, "budget_s": args.budget_s,
           "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}}
    rec["load"] = (time_load(net, pm, config, device, args.tmp_dir) if not args.no_load
                   else {"skipped": "--no-load"})
    setup = {"image_size": (args.height, args.width), "stride": args.stride, "windows": args.windows,
             "vae_batch": args.vae_batch, "autocast": args.autocast, "device": device,
             "compile_reserve_s": args.compile_reserve_s, "fixed_windows": args.smoke}
    skip = {v[0]: "--smoke: torch.compile not exercised" for v in VARIANTS if v[2]} if args.smoke else {}
    rec["variants"] = run_variants(net, pm, context, setup, flops, deadline, skip)
    rec["targets"] = targets(rec["variants"], peak)
    return rec


def _fl(x: float) -> str:
    """A FLOP count with a readable unit."""
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} FLOP"


def _ok(t: dict | None) -> str:
    return "not measured" if t is None else f"{t['value']:.3g} (target ≥ {t['target']:g}): {'ok' if t['ok'] else 'FAIL'}"


def markdown(rec: dict) -> str:
    """The record as a Markdown page."""
    f = rec["flops"]
    md = ["# GPU benchmark (full-size Geo4D, random weights)", ""]
    if rec["status"] != "ok":
        md += [f"**{rec['status']}**: no timings, memory or load figures were recorded. Run "
               "`python benchmarks/gpu.py` on a CUDA machine (one H100/H200, < 8 min).", ""]
    else:
        md += [f"{rec['device']}, torch {rec['torch']}; {f['image_size'][0]}×{f['image_size'][1]}, windows of "
               f"{f['window']}, stride {f['stride']}, {f['steps']} DDIM steps; decoded windows (post-processing "
               f"excluded); frames/s = windows/s × stride. Peak {rec['peak_tflops']} TFLOP/s ({rec['peak_source']}).",
               "", "| variant | autocast | window_batch | compile | windows | warm-up s | s | windows/s | frames/s | "
               "TFLOP/s | peak GPU MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for v in rec["variants"]:
            if "seconds" not in v:
                md.append(f"| {v['name']} | {v.get('skipped') or 'failed: ' + v.get('failed', '')} |" + " |" * 9)
                continue
            md.append(f"| {v['name']} | {v['autocast']} | {v['window_batch'] or '—'} | {v['compile']} | {v['windows']} "
                      f"| {v['warmup_s']:.1f} | {v['seconds']:.2f} | {v['windows_per_s']:.3f} | {v['frames_per_s']:.2f} "
                      f"| {v['achieved_tflops']:.1f} | {v.get('peak_gpu_mb', 0):.0f} |")
        t = rec["targets"]
        md += ["", f"Targets (best ours: {t.get('best_ours')}): frames/s vs official {_ok(t.get('speedup'))}; "
               f"share of the bf16 peak {_ok(t.get('flop_floor_share'))}.", ""]
        ld = rec["load"]
        md += [f"Load: {ld['load_s']:.1f} s for `load_official(..., device='cuda', dtype=bfloat16)` of "
               f"{ld['files_gb']:.2f} GB ({ld['note']}); written in {ld['write_s']:.1f} s." if "load_s" in ld
               else f"Load: {ld.get('skipped')}", ""]
    md += [f"FLOPs per window ({f['counted_on']}, FlopCounterMode): U-Net {_fl(f['unet_per_window'])} "
           f"({f['steps']} × {_fl(f['unet_per_call'])}), decode (4 modalities) {_fl(f['decode_per_window'])}, "
           f"encode {_fl(f['encode_per_frame'])} per frame; official {_fl(f['official_per_window'])} "
           f"({f['window']} frames encoded), ours {_fl(f['ours_per_window'])} ({f['stride']} new frames encoded): "
           f"U-Net {100 * f['ours_split']['unet']:.0f} %, encode {100 * f['ours_split']['encode']:.0f} %, decode "
           f"{100 * f['ours_split']['decode']:.0f} %.", ""]
    peaks = [rec["peak_tflops"]] if rec.get("peak_tflops") else [989.0, 790.0]
    md += ["FLOP floor (ours FLOPs per window / peak): " + "; ".join(
        f"{f['ours_per_window'] / (p * 1e12):.3g} s per window at {p:g} TFLOP/s" for p in peaks) + ".", ""]
    return "\n".join(md)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-s", type=float, default=420.0, help="global deadline from the start (s)")
    p.add_argument("--compile-reserve-s", type=float, default=150.0, help="seconds a compile variant needs left")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: table by name)")
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--windows", type=int, default=4, help="windows per timed run (at least window_batch)")
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--no-load", action="store_true", help="skip the checkpoint write/load timing")
    p.add_argument("--tmp-dir", default=None, help="where the temporary checkpoint is written")
    p.add_argument("--smoke", action="store_true", help="tiny config on CPU, float32; prints, writes nothing")
    args = p.parse_args(argv)
    args.autocast = torch.bfloat16
    if args.smoke:
        args.height, args.width, args.windows, args.autocast, args.no_load = 16, 16, 2, "off", True
    return args


def write(rec: dict) -> None:
    """benchmarks/results/gpu.json and gpu.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps(rec, indent=2, default=str) + "\n")
    (RESULTS / "gpu.md").write_text(markdown(rec))


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    deadline = start + args.budget_s
    torch.set_grad_enabled(False)
    if args.smoke:
        torch.set_num_threads(1)  # a few seconds even on a busy shared machine
        rec = measure(args, torch.device("cpu"), TINY_CONFIG, deadline)
        print(markdown(rec))
        return 0
    if not torch.cuda.is_available():
        flops = count_flops(FULL_CONFIG, (args.height, args.width), args.stride)
        rec = {"status": "not run: no GPU", "device": None, "torch": torch.__version__, "flops": flops,
               "variants": [{"name": v[0], "skipped": "not run: no GPU"} for v in VARIANTS], "targets": None}
        write(rec)
        print(markdown(rec))
        return 0
    rec = measure(args, torch.device("cuda"), FULL_CONFIG, deadline)
    rec["elapsed_s"] = time.perf_counter() - start
    write(rec)
    print(markdown(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
