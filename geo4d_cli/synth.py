"""``geo4d synth``: render synthetic dynamic scenes with ground truth (the project's test data)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from geo4d.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="render SYNTHETIC dynamic scenes (mp4 + exact ground truth) for testing",
        description="Render synthetic dynamic scenes: OUTDIR/synthetic_NNN.mp4 (H.264) and "
                    "OUTDIR/synthetic_NNN.gt/ (depth with +inf sky, intrinsics, camera-to-world poses, "
                    "dynamic masks; see docs/synthetic.md). Video i uses seed SEED+i. Existing files of "
                    "the same names are replaced.",
    )
    p.add_argument("outdir", metavar="OUTDIR", help="output directory (created)")
    p.add_argument("--videos", type=int, default=1, help="number of videos (default 1)")
    p.add_argument("--frames", type=int, default=48, help="frames per video (default 48)")
    p.add_argument("--height", type=int, default=160, help="frame height, even (default 160)")
    p.add_argument("--width", type=int, default=256, help="frame width, even (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first video (default 0)")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate (default 10)")
    p.add_argument("--dynamic", type=int, default=3, help="moving objects per scene (default 3)")
    p.add_argument("--prefix", default="synthetic", help="file name prefix (default 'synthetic')")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import ground_truth_dir, write_ground_truth

    for opt, v, lo in (("--videos", args.videos, 1), ("--frames", args.frames, 1), ("--height", args.height, 2),
                       ("--width", args.width, 2), ("--seed", args.seed, 0), ("--dynamic", args.dynamic, 0)):
        if v < lo:
            raise InputError(f"{opt} must be >= {lo}, got {v}")
    if args.height % 2 or args.width % 2:
        raise InputError(f"--height/--width must be even for H.264 yuv420p, got {args.width}×{args.height} (W×H)")
    if not args.fps > 0:
        raise InputError(f"--fps must be > 0, got {args.fps}")
    if not args.prefix or "/" in args.prefix:
        raise InputError(f"--prefix {args.prefix!r}: must be a non-empty file name")
    out = Path(args.outdir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    print(f"synthetic scenes (test data with exact ground truth) → {out}")
    for i in range(args.videos):
        t0 = time.perf_counter()
        name = f"{args.prefix}_{i:03d}"
        seed = args.seed + i
        rendered = render(make_scene(seed, args.frames, args.height, args.width, fps=args.fps, n_dynamic=args.dynamic))
        video = write_video(out / f"{name}.mp4", rendered.frames, fps=args.fps)
        write_ground_truth(ground_truth_dir(video), rendered.geometry)
        print(f"  {name}: seed {seed}, {args.frames} frames {args.width}×{args.height} → {video.name} + "
              f"{ground_truth_dir(video).name}/ ({time.perf_counter() - t0:.1f} s)")
    return 0
