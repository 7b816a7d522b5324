"""Precision: the default mode (bf16 autocast over float32 weights) vs the float32 parity mode, full size.

The full-size config with **random weights** on CPU (outputs are meaningless, so this measures how far
the two numeric modes drift apart through the same computation, not accuracy): a ``--frames``-frame
video at ``--height``×``--width`` (default 20 frames at 64×64 = 2 windows of 16 frames, stride 4), the
same initial noise in every mode (:func:`geo4d_model.predictor.window_noise` is seeded by window start).

Modes (all on the fast path, :meth:`Geo4DPredictor.predict_windows`):

* ``float32`` — the parity mode, ``--dtype float32 --autocast off``: the reference.
* ``bf16_autocast`` — what ``Geo4DPredictorSpec``'s defaults (``dtype float32``, ``autocast auto``) run
  on CUDA: float32 weights, ``torch.autocast(bfloat16)`` around every U-Net and VAE call. On CPU
  ``auto`` means off, so the benchmark asks for ``autocast="bfloat16"`` explicitly (CPU autocast; its
  op lists are close to, not identical with, CUDA's).
* ``bf16_weights`` (optional, ``--bf16-weights``) — ``--dtype bfloat16``: the same modules converted to
  bfloat16 in place (schedule buffers kept float32, as :func:`~geo4d_model.loader.load_official` does),
  no autocast on CPU.

Compared with the parity mode: the decoded windows per modality (elementwise ``|a−b|/|a|``: median,
99th percentile, max; and ``‖a−b‖/‖a‖``), and after post-processing and :func:`geo4d.fusion.fuse`, the
fused depth (median relative difference over pixels valid in both) and the poses (rotation angle of
``R_aᵀR_b``; camera-centre difference relative to the parity run's path length). Weights are built once
(float32, ~6.6 GB); parameters have ``requires_grad`` off so autocast keeps no bf16 weight cache.

Writes ``benchmarks/results/precision.json`` and ``precision.md`` (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "geo4d-reference"
RESULTS = ROOT / "benchmarks" / "results"
#: Decoded channels (of the 11) per modality.
CHANNELS = {"pointmap": slice(0, 3), "pointmap_conf": slice(3, 4), "ray_dir": slice(4, 7),
            "ray_moment": slice(7, 10), "disparity": slice(10, 11)}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(config, seed: int = 0):
    """Random-weight float32 network, point-map VAE and a context (1, L, C) on CPU; no gradients."""
    from geo4d_model.loader import build_random

    net, pm = build_random(config, device="cpu", dtype=torch.float32, seed=seed)
    net.requires_grad_(False)
    pm.requires_grad_(False)
    L = 77 + net.cfg.resampler.num_queries * (net.cfg.resampler.video_length or 1)
    gen = torch.Generator().manual_seed(seed + 1)
    context = torch.randn(1, L, net.cfg.unet.context_dim, generator=gen) * 0.5
    return net, pm, context


def make_scene_video(T: int, H: int, W: int, seed: int = 0):
    """A rendered synthetic scene (:func:`geo4d.synthetic.render`): ``frames`` (T, H, W, 3) uint8 and
    its ground-truth ``geometry`` (used for the fusion-sensitivity proxy)."""
    from geo4d.synthetic import make_scene, render

    return render(make_scene(seed, n_frames=T, height=H, width=W))


def run_mode(net, pm, context, video: np.ndarray, starts: list[int], V: int, autocast) -> dict:
    """Predict every window (fast path) → ``decoded`` [(1, 11, V, H, W) float32], ``predictions``
    [WindowPrediction], ``seconds`` (encode + sample + decode + post-processing)."""
    from geo4d_model.postprocess import postprocess_window
    from geo4d_model.predictor import Geo4DPredictor

    decoded: list[torch.Tensor] = []

    def keep(d, **kw):
        decoded.append(d.detach().float().cpu().clone())
        return postprocess_window(d, **kw)

    pred = Geo4DPredictor(net, pm, context, image_size=video.shape[1:3], fast=True, window_batch=len(starts),
                          autocast=autocast, postprocess=keep)
    t0 = time.perf_counter()
    preds = [p for _, p in pred.predict_windows(video, starts, V)]
    return {"decoded": decoded, "predictions": preds, "seconds": time.perf_counter() - t0,
            "autocast": "off" if pred.autocast_dtype is None else str(pred.autocast_dtype).removeprefix("torch."),
            "weights": str(pred.param_dtype).removeprefix("torch.")}


def fuse_predictions(preds: list, starts: list[int], T: int, z_offset: bool = False) -> dict:
    """Stack the window predictions by modality name (G, V, …) and fuse them (``z_offset``: the point maps
    carry the network's z offset); returns ``depth`` (T, H, W),
    ``world_from_cam`` (T, 4, 4), ``seconds``, or ``error`` when the fusion refuses the (random) input."""
    from geo4d.fusion import FusionConfig, fuse

    arrays = {k: np.stack([p.as_dict()[k] for p in preds]) for k in preds[0].as_dict()}
    t0 = time.perf_counter()
    try:
        res = fuse(arrays, starts, T, config=FusionConfig(pointmap_z_offset=z_offset))
    except Exception as exc:  # noqa: BLE001 - reported, not hidden: random weights can defeat the fusion
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                "seconds": time.perf_counter() - t0}
    g = res.geometry
    return {"depth": np.asarray(g.depth), "world_from_cam": np.asarray(g.world_from_cam),
            "seconds": time.perf_counter() - t0}


def relative_stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Elementwise ``|a−b|/|a|`` (where ``|a| > 1e-6·max|a|``): median, p99, max; and ``‖a−b‖₂/‖a‖₂``."""
    a, b = a.double().flatten(), b.double().flatten()
    diff = (a - b).abs()
    keep = a.abs() > 1e-6 * float(a.abs().max().clamp_min(1e-30))
    rel = (diff[keep] / a.abs()[keep]).numpy()
    return {"median_rel": float(np.median(rel)), "p99_rel": float(np.quantile(rel, 0.99)),
            "max_rel": float(rel.max()), "norm_rel": float(diff.norm() / a.norm().clamp_min(1e-30)),
            "max_abs": float(diff.max())}


def compare_decoded(ref: list[torch.Tensor], other: list[torch.Tensor]) -> dict:
    """Per modality :func:`relative_stats` over all windows of (1, 11, V, H, W) decoded tensors."""
    a, b = torch.cat(ref), torch.cat(other)
    return {name: relative_stats(a[:, ch], b[:, ch]) for name, ch in CHANNELS.items()}


def compare_fused(ref: dict, other: dict) -> dict:
    """Fused depth: median ``|a−b|/a`` over pixels valid (> 0) in both; poses: rotation angle (deg) of
    ``R_aᵀR_b`` and ``‖c_a − c_b‖ / path length of a`` per frame (median, max)."""
    if "error" in ref or "error" in other:
        return {"error": ref.get("error") or other.get("error")}
    da, db = ref["depth"], other["depth"]
    valid = (da > 0) & (db > 0)
    rel = np.abs(da[valid] - db[valid]) / da[valid]
    Pa, Pb = ref["world_from_cam"], other["world_from_cam"]
    Ra, Rb = Pa[:, :3, :3], Pb[:, :3, :3]
    cos = (np.einsum("tji,tjk->tik", Ra, Rb).trace(axis1=1, axis2=2) - 1.0) / 2.0
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    ca, cb = Pa[:, :3, 3], Pb[:, :3, 3]
    path = float(np.linalg.norm(np.diff(ca, axis=0), axis=1).sum())
    tdiff = np.linalg.norm(ca - cb, axis=1) / max(path, 1e-12)
    return {"depth_median_rel": float(np.median(rel)) if rel.size else None,
            "depth_valid_share": float(valid.mean()),
            "rotation_deg_median": float(np.median(angle)), "rotation_deg_max": float(angle.max()),
            "translation_rel_path_median": float(np.median(tdiff)), "translation_rel_path_max": float(tdiff.max()),
            "path_length": path}


def synthetic_windows(rendered, starts: list[int], V: int, stride: int, seed: int) -> list:
    """Exact (clean) window predictions of the rendered scene from its ground truth (fusable)."""
    from geo4d.synthetic_predictor import SyntheticPredictor

    sp = SyntheticPredictor(rendered.geometry, seed=seed, window_size=V, stride=stride)
    return [sp.predict_window(rendered.frames[s : s + V], s) for s in starts]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def transfer(synth: list, ref: list, other: list) -> list:
    """The network's mode difference carried onto fusable predictions: per window and modality
    ``synth + (other − ref) · rms(synth) / rms(ref)`` (rms of synth over its valid pixels); ray
    directions renormalised, confidence clipped at 0, invalid (sky) pixels left invalid."""
    from geo4d.predictor import WindowPrediction

    out = []
    for s, a, b in zip(synth, ref, other):
        S, A, B = s.as_dict(), a.as_dict(), b.as_dict()
        valid = S["pointmap_conf"] > 0
        new = {k: S[k] + (B[k] - A[k]) * (_rms(S[k][valid]) / max(_rms(A[k]), 1e-12)) for k in S}
        new["ray_dir"] /= np.linalg.norm(new["ray_dir"], axis=-1, keepdims=True).clip(1e-12)
        new["pointmap_conf"] = np.where(valid, new["pointmap_conf"].clip(0), 0)
        new["disparity"] = np.where(S["disparity"] > 0, new["disparity"], 0)
        out.append(WindowPrediction(**{k: v.astype(np.float32) for k, v in new.items()}))
    return out


def to_bf16_weights(net, pm) -> None:
    """Convert the modules to bfloat16 in place (parameter by parameter), schedule buffers kept float32."""
    from geo4d_model.network import SCHEDULE_BUFFERS

    keep = {name: getattr(net, name).clone() for name in SCHEDULE_BUFFERS}
    net.to(torch.bfloat16)
    pm.to(torch.bfloat16)
    for name, value in keep.items():
        getattr(net, name).data = value


def _run_modes(args, net, pm, context, rendered, starts: list[int], V: int) -> dict:
    """Every mode: predict, fuse the network's own predictions, and compare with the parity mode
    (decoded windows; fused results directly and through :func:`transfer`)."""
    modes = [("float32", "off"), ("bf16_autocast", torch.bfloat16)]
    modes += [("bf16_weights", "off")] if args.bf16_weights else []
    synth = synthetic_windows(rendered, starts, V, args.stride, args.seed)
    proxy_ref = fuse_predictions(synth, starts, args.frames)
    ref, out = None, {}
    for name, autocast in modes:
        if name == "bf16_weights":
            to_bf16_weights(net, pm)
        r = run_mode(net, pm, context, rendered.frames, starts, V, autocast)
        fused = fuse_predictions(r["predictions"], starts, args.frames, z_offset=True)  # the network's windows
        m = out[name] = {"weights": r["weights"], "autocast": r["autocast"], "predict_s": r["seconds"],
                         "fuse_s": fused["seconds"], "fuse_error": fused.get("error"),
                         "peak_rss_mb_so_far": peak_rss_mb()}
        print(f"{name}: predict {r['seconds']:.1f} s, fuse {fused['seconds']:.1f} s", file=sys.stderr)
        if ref is None:
            ref = {**r, "fused": fused}
            continue
        m["decoded_vs_float32"] = compare_decoded(ref["decoded"], r["decoded"])
        m["fused_vs_float32"] = compare_fused(ref["fused"], fused)
        proxy = fuse_predictions(transfer(synth, ref["predictions"], r["predictions"]), starts, args.frames)
        m["fused_proxy_vs_float32"] = compare_fused(proxy_ref, proxy)
    return out


def measure(args) -> dict:
    """Build the model once, run the modes (the figures of the results files)."""
    from geo4d.windows import window_starts

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    net, pm, context = build(args.config, args.seed)
    build_s = time.perf_counter() - t0
    V = net.cfg.unet.temporal_length
    starts = [int(s) for s in window_starts(args.frames, V, args.stride)]
    rendered = make_scene_video(args.frames, args.height, args.width, args.seed)
    out = _run_modes(args, net, pm, context, rendered, starts, V)
    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "threads": torch.get_num_threads(), "config": str(args.config), "frames": args.frames,
            "image_size": [args.height, args.width], "window": V, "stride": args.stride, "starts": starts,
            "build_s": build_s, "peak_rss_mb": peak_rss_mb(), "modes": out,
            "note": "random weights: outputs are meaningless; figures show numeric drift between modes only"}


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def _fused_rows(res: dict, key: str, title: str) -> list[str]:
    md = ["", title, "", "| mode | depth median rel | rotation ° median / max | translation / path median / max |",
          "|---|---|---|---|"]
    for name, m in res["modes"].items():
        f = m.get(key)
        if f is None:
            continue
        if "error" in f:
            md.append(f"| {name} | fusion refused: {f['error']} | | |")
            continue
        md.append(f"| {name} | {_fmt(f['depth_median_rel'])} | {_fmt(f['rotation_deg_median'])} / "
                  f"{_fmt(f['rotation_deg_max'])} | {_fmt(f['translation_rel_path_median'])} / "
                  f"{_fmt(f['translation_rel_path_max'])} |")
    return md


def markdown(res: dict) -> str:
    """The results as a Markdown page."""
    md = ["# Precision: bf16 default vs the float32 parity mode", "",
          f"Config `{Path(res['config']).name}`, random weights, CPU ({res['threads']} threads, torch {res['torch']}); "
          f"{res['frames']} frames at {res['image_size'][0]}×{res['image_size'][1]}, windows of {res['window']} "
          f"at starts {res['starts']}; same initial noise. {res['note']}.", "",
          "| mode | weights | autocast | predict s | fuse s |", "|---|---|---|---|---|"]
    for name, m in res["modes"].items():
        md.append(f"| {name} | {m['weights']} | {m['autocast']} | {m['predict_s']:.1f} | {m['fuse_s']:.1f} |")
    md += ["", "Decoded windows vs float32 (elementwise |a−b|/|a|; norm = ‖a−b‖/‖a‖):", "",
           "| mode | modality | median | p99 | max | norm |", "|---|---|---|---|---|---|"]
    for name, m in res["modes"].items():
        for mod, s in m.get("decoded_vs_float32", {}).items():
            md.append(f"| {name} | {mod} | {_fmt(s['median_rel'])} | {_fmt(s['p99_rel'])} | "
                      f"{_fmt(s['max_rel'])} | {_fmt(s['norm_rel'])} |")
    md += _fused_rows(res, "fused_vs_float32", "After post-processing and fusion of the network's own "
                      "predictions, vs float32:")
    md += _fused_rows(res, "fused_proxy_vs_float32", "Fusion-sensitivity proxy (the mode's post-processed "
                      "difference from float32, rescaled per modality, added to the exact predictions of the "
                      "rendered scene, then fused; vs fusing the exact predictions):")
    md += ["", f"Peak RSS {res['peak_rss_mb']:.0f} MB; building the random float32 model took {res['build_s']:.0f} s.",
           "GPU timings of these modes: `benchmarks/gpu.py` (`benchmarks/results/gpu.md`).", ""]
    return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(SHARED / "official_inference_geo4d.yaml"))
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16-weights", action="store_true", help="also run --dtype bfloat16 (modules converted)")
    p.add_argument("--no-write", action="store_true", help="print only (e.g. with the tiny config)")
    args = p.parse_args(argv)
    if not Path(args.config).is_file():
        print(f"not run: {args.config} not found", file=sys.stderr)
        return 0
    res = measure(args)
    md = markdown(res)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "precision.json").write_text(json.dumps(res, indent=2) + "\n")
        (RESULTS / "precision.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
