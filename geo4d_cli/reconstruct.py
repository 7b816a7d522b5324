"""``geo4d reconstruct``, ``geo4d fuse`` and ``geo4d demo``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from geo4d.errors import InputError
from geo4d_cli.prefect_server import prefect_env

SYNTHETIC_NOTICE = (
    "predictor: SYNTHETIC test instrument — predictions are derived from ground truth, not from the network"
)


#: Help of ``--no-report`` (reconstruct and archive).
NO_REPORT_HELP = ("do not draw the report figure STORE/reports/<id>.png (default: drawn after fusion and "
                  "evaluation; `geo4d report` redraws it)")

_OVERWRITE_HELP = ("recompute stages finished with other settings (default: stop with one line naming the "
                   "differing setting; nothing is deleted)")


def add_predictor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("predictor")
    g.add_argument("--predictor", choices=["synthetic", "geo4d"], default=None,
                   help="'geo4d' = the network (needs --checkpoint/--pointmap-vae/--config); "
                        "'synthetic' = test instrument built from the video's .gt ground truth")
    g.add_argument("--checkpoint", help="official Geo4D model.ckpt")
    g.add_argument("--pointmap-vae", help="official Geo4D point-map vae.ckpt")
    g.add_argument("--config", help="official configs/inference_geo4d.yaml")
    g.add_argument("--device", default=None, help="torch device for the network (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="network dtype")
    g.add_argument("--image-size", help="network: frame size HxW (default 320x512; Geo4D supports 320x512, 384x512, "
                   "256x576, 192x640)")
    g.add_argument("--fs", type=int, help="network: frame-rate condition (default: the official demo's "
                   "int(video fps / frame stride), 24 when the fps is unknown)")
    g.add_argument("--autocast", choices=["auto", "off", "bfloat16", "float16"], default=None,
                   help="network: autocast (default auto = bfloat16 on CUDA; --dtype float32 --autocast off is the "
                        "parity mode, docs/model.md)")
    g.add_argument("--clip-cache", help="network: directory caching the constant CLIP context (default ~/.cache/geo4d)")
    g.add_argument("--context", help="network: constant context file (.safetensors) for a checkpoint without CLIP "
                   "weights (`geo4d context` writes one)")
    g.add_argument("--ground-truth", help="synthetic predictor / evaluation: ground-truth directory")
    g.add_argument("--noise-depth", type=float, default=0.0, help="synthetic: smooth relative depth noise")
    g.add_argument("--noise-pose-deg", type=float, default=0.0, help="synthetic: pose jitter in degrees")
    g.add_argument("--corrupt-windows", type=int, default=0, help="synthetic: windows with a wrong rotation")
    g.add_argument("--seed", type=int, default=0, help="synthetic: seed of the gauges and noise")


def predictor_spec(args: argparse.Namespace):
    """The validated :data:`pipeline.predictors.PredictorSpec` the predictor options describe."""
    from pipeline.predictors import parse_predictor_spec

    return parse_predictor_spec(_predictor_mapping(args))


def fusion_option(text: str | None):
    """``--fusion JSON`` as a validated :class:`geo4d.fusion.FusionConfig` (None: the defaults)."""
    from geo4d.fusion import FusionConfig

    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--fusion {text}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InputError(f"--fusion {text}: expected a JSON object of fusion options")
    return FusionConfig.parse(data, what="--fusion")


def _predictor_mapping(args: argparse.Namespace) -> dict:
    kind = args.predictor or ("geo4d" if args.checkpoint else "synthetic")
    if kind == "geo4d":
        missing = [o for o, v in (("--checkpoint", args.checkpoint), ("--config", args.config),
                                  ("--pointmap-vae", args.pointmap_vae)) if not v]
        if missing:
            raise InputError(f"--predictor geo4d needs {', '.join(missing)}")
        for opt, v in (("--checkpoint", args.checkpoint), ("--config", args.config), ("--pointmap-vae", args.pointmap_vae)):
            if not Path(v).is_file():
                raise InputError(f"{opt} {v}: no such file")
        spec = {"kind": "geo4d", "config": args.config, "checkpoint": args.checkpoint, "pointmap_vae": args.pointmap_vae}
        if args.device:
            spec["device"] = args.device
        if args.dtype:
            spec["dtype"] = args.dtype
        if getattr(args, "image_size", None):
            try:
                h, w = (int(x) for x in args.image_size.lower().split("x"))
            except ValueError:
                raise InputError(f"--image-size {args.image_size}: expected HxW, e.g. 320x512") from None
            spec["image_size"] = [h, w]
        if getattr(args, "fs", None):
            spec["fs"] = args.fs
        for opt, key in (("clip_cache", "clip_context_cache"), ("autocast", "autocast"), ("context", "context")):
            if getattr(args, opt, None):
                spec[key] = getattr(args, opt)
        if spec.get("context") and not Path(spec["context"]).is_file():
            raise InputError(f"--context {spec['context']}: no such file")
        return spec
    noise = {}
    if args.noise_depth:
        noise["depth_noise"] = args.noise_depth
    if args.noise_pose_deg:
        noise["pose_jitter_deg"] = args.noise_pose_deg
    if args.corrupt_windows:
        noise["corrupt_windows"] = args.corrupt_windows
    return {"kind": "synthetic", "ground_truth": args.ground_truth, "noise": noise, "seed": args.seed}


def _open_store(location: str, mode: str = "a"):
    from storage.store import Store

    return Store(location, mode=mode)


RESIZE_HELP = ("how frames are brought to the network size: crop (scale to cover, cut the borders), pad "
               "(scale to fit, black bands marked invalid) — both keep square pixels — or stretch (the official "
               "demo's, for parity; distorts other aspect ratios) (default: crop)")


def add_framing_args(p: argparse.ArgumentParser, per_video: str = "") -> None:
    """``--resize`` and ``--intrinsics``, shared by ``reconstruct`` and ``archive``."""
    p.add_argument("--resize", choices=["crop", "pad", "stretch"], default="crop", help=RESIZE_HELP)
    p.add_argument("--intrinsics", metavar="FX,FY,CX,CY",
                   help="known camera intrinsics in source-video pixels: the fusion keeps K fixed at them instead "
                        f"of estimating it{per_video} (default: estimated)")


def add_shot_args(p: argparse.ArgumentParser) -> None:
    """``--shots`` and ``--shot-threshold``, shared by ``reconstruct`` and ``archive`` (docs/curation.md)."""
    p.add_argument("--shots", choices=["pyscenedetect", "off"], default="pyscenedetect",
                   help="split the video into shots at hard cuts and fades before the windows (PySceneDetect; "
                        "each shot is reconstructed on its own) or 'off': the whole video is one shot "
                        "(default: pyscenedetect)")
    p.add_argument("--shot-threshold", type=float, default=None, metavar="T",
                   help="the least frame-to-frame HSV change of a hard cut (PySceneDetect AdaptiveDetector, default 20; lower "
                        "finds more cuts)")


def shots_option(args: argparse.Namespace) -> dict:
    """The shots stage's settings (:class:`pipeline.shots.ShotSettings` fields) of the options."""
    from pipeline.shots import ShotSettings

    out: dict = {"detector": args.shots}
    if args.shot_threshold is not None:
        out["cut_threshold"] = args.shot_threshold
    return ShotSettings.parse(out, what="--shots").model_dump()


def cmd_reconstruct(args: argparse.Namespace) -> int:
    video = Path(args.video)
    if not video.is_file():
        raise InputError(f"{video}: no such file" if not video.exists() else f"{video}: not a file")
    if not os.access(video, os.R_OK):
        raise InputError(f"{video}: permission denied")
    spec = predictor_spec(args)
    fusion = fusion_option(args.fusion)
    from storage.sources import parse_intrinsics

    intrinsics = parse_intrinsics(args.intrinsics) if args.intrinsics else None
    shots = shots_option(args)
    _open_store(args.store)  # fail fast on a store of another layout, before any work
    if spec.kind == "synthetic":
        print(SYNTHETIC_NOTICE)
    prefect_env()
    from flows.reconstruct import reconstruct_video
    from tasks.progress import close_console

    t0 = time.perf_counter()
    result = reconstruct_video(
        str(video), args.store, predictor=spec, video_id=args.video_id, frame_stride=args.frame_stride,
        fusion=fusion, evaluate=not args.no_evaluate, ground_truth=args.ground_truth, overwrite=args.overwrite,
        lease_wait=0.0 if args.no_wait else None, report=not args.no_report, resize=args.resize,
        intrinsics=intrinsics, shots=shots,
    )
    close_console()
    print(f"video {result['video_id']} → {args.store} in {time.perf_counter() - t0:.1f} s")
    _print_stages(result)
    _print_camera(args.store, result["video_id"])
    if result.get("report"):
        r = result["report"]
        print(f"report: {r['location']}" if r["location"] else f"report not written: {r['error']}")
    return 0


def _print_camera(store: str, video_id: str) -> None:
    """The framing and frame 0's K in source pixels (what a user compares with a calibration), and
    the range of the focal length when it changes over the video (a zoom)."""
    s = _open_store(store, mode="r")
    f, Ks = s.framing(video_id), s.read_intrinsics_source(video_id)
    K = Ks[0]
    given = ((s.read_fused(video_id).meta.get("diagnostics") or {}).get("intrinsics") or {}).get("given")
    fx = Ks[:, 0, 0]
    zoom = f"; fx per frame {fx.min():.1f}–{fx.max():.1f} (focal per frame)" if fx.max() > fx.min() else ""
    print(f"  frames {f.source_size[1]}×{f.source_size[0]} (rotated {f.rotation}°) → {f.size[1]}×{f.size[0]} "
          f"({f.mode}); K in source pixels: fx {K[0, 0]:.1f} fy {K[1, 1]:.1f} cx {K[0, 2]:.1f} cy {K[1, 2]:.1f}"
          + (" (given)" if given else "") + (f" (frame 0{zoom})" if zoom else ""))


def _print_stages(result: dict) -> None:
    from geo4d.report import format_metrics_table

    for stage in ("decode", "shots", "windows", "fuse", "evaluate"):
        r = result.get(stage)
        if r:
            state = "skipped (already complete)" if r["skipped"] else f"{r['seconds']:.2f} s"
            print(f"  {stage:<9} {state}" + (f" ({_shots_line(r['details'])})" if stage == "shots" else ""))
    metrics = (result.get("evaluate") or {}).get("details", {}).get("metrics")
    if metrics:
        print(format_metrics_table({result["video_id"]: metrics}))


def _shots_line(details: dict) -> str:
    """``2 shots (1 skipped: frames 40–48 shorter than one window …)`` of the shots stage's details."""
    n, skipped = details.get("shots", 1), details.get("skipped_shots") or []
    text = f"{n} shot{'s' if n != 1 else ''}"
    if skipped:
        text += f", {len(skipped)} skipped: " + "; ".join(
            f"frames {s['start']}–{s['end'] - 1} {s['reason']}" for s in skipped)
    return text


def cmd_fuse(args: argparse.Namespace) -> int:
    from pipeline.stages import fuse_stage

    store = _open_store(args.store)
    fusion = fusion_option(args.fusion)

    from tasks.progress import CONSOLE_ENV, console

    os.environ.setdefault(CONSOLE_ENV, "1")
    screen = console()

    def progress(done: int, total: int, message: str = "") -> None:
        if screen is not None:
            screen.update("fuse", done, total, message)

    t0 = time.perf_counter()
    res = fuse_stage(store, args.video, fusion=fusion, require_upstream=False, progress=progress,
                     overwrite=args.overwrite)
    print(f"fused {args.video}: {'already complete' if res.skipped else f'{time.perf_counter() - t0:.2f} s'}"
          f" → {args.store}/videos/{args.video}/fused")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from geo4d_cli.demo import run_demo

    return run_demo(Path(args.workdir), frames=args.frames, height=args.height, width=args.width, seed=args.seed)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct one video into a store (decode → windows → fuse → evaluate)")
    p.add_argument("video", help="video file")
    p.add_argument("--store", required=True, help="Zarr store path or URL (created if missing)")
    p.add_argument("--video-id", help="id in the store (default: <stem>-<content hash>)")
    p.add_argument("--frame-stride", type=int, default=1, help="keep every N-th frame")
    p.add_argument("--fusion", help="fusion options as JSON (see docs/fusion.md)")
    p.add_argument("--no-evaluate", action="store_true", help="skip the evaluation stage")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.add_argument("--no-wait", action="store_true",
                   help="when another process is writing this video, exit 3 at once instead of waiting for it")
    p.add_argument("--no-report", action="store_true", help=NO_REPORT_HELP)
    add_framing_args(p)
    add_shot_args(p)
    add_predictor_args(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("fuse", help="fuse a video's stored windows (any store following docs/store.md)")
    p.add_argument("--store", required=True, help="Zarr store path or URL holding the video's windows")
    p.add_argument("--video", required=True, help="video id in the store")
    p.add_argument("--fusion", help="fusion options as JSON (see docs/fusion.md)")
    p.add_argument("--overwrite", action="store_true", help="replace a fusion finished with other options")
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("demo", help="synthesise a scene, reconstruct it with the synthetic predictor, write a report")
    p.add_argument("--workdir", default="demo-out", help="folder for the scene, the store and the report")
    p.add_argument("--frames", type=int, default=48, help="frames of the synthetic scene")
    p.add_argument("--height", type=int, default=160, help="frame height of the synthetic scene")
    p.add_argument("--width", type=int, default=256, help="frame width of the synthetic scene")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic scene")
    p.set_defaults(func=cmd_demo)
