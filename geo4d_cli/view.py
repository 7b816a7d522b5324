"""``geo4d view``: an interactive 3D view of a fused video with Rerun (docs/viewer.md).

The point clouds over time with the camera path and frusta, coloured by RGB or confidence, with a
time slider; what is logged is :mod:`geo4d.viewer`'s (the store is read here). Why Rerun: a recording
is a file (``--save FILE.rrd``) that can be opened later, shared, viewed natively (``rerun FILE.rrd``)
or in a browser (``--web``: Rerun's web viewer server), the time slider is built in, and the recording
itself is tested without a browser (tests/test_viewer.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from geo4d.errors import InputError

WEB_PORT = 9090
GRPC_PORT = 9876


def has_display() -> bool:
    """Whether a native viewer window can open: macOS and Windows always; elsewhere an X11 or Wayland
    display in the environment."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _check_output(args: argparse.Namespace) -> None:
    """One-line errors for outputs that cannot work, before the store is read."""
    if not args.save and not args.web and not has_display():
        raise InputError("no display (DISPLAY is not set) for the native viewer: use --save FILE.rrd to write "
                         "a recording (open it with `rerun FILE.rrd`) or --web to serve the browser viewer")
    if args.save:
        save = Path(args.save)
        if save.is_dir():
            raise InputError(f"--save {save}: is a directory; give the .rrd file to write")
        if not save.parent.is_dir():
            raise InputError(f"--save {save}: directory {save.parent} does not exist")
    if args.max_points < 1:
        raise InputError(f"--max-points {args.max_points}: must be >= 1")
    if not 0.0 <= args.drop_low_confidence < 1.0:
        raise InputError(f"--drop-low-confidence {args.drop_low_confidence}: must be a fraction in [0, 1)")


def _description(video_id: str, info, synthetic: bool | None, opts, shots: list | None = None) -> str:
    """The recording's ``description`` document (markdown); ``shots``: the shots' score records
    (:meth:`storage.store.Store.read_shot_scores`), listed with the skipped ones and their reasons."""
    from geo4d.report import shot_lines

    predictor = {True: "**SYNTHETIC test instrument** (predictions derived from ground truth, not the network)",
                 False: "Geo4D network", None: "not recorded"}[synthetic]
    return (f"# {video_id}\n\n{info.n_frames} frames at {info.width}×{info.height}, "
            f"{info.fps:g} fps\n\npredictor: {predictor}\n\npoints coloured by {opts.color}; at most "
            f"{opts.max_points} per frame; the {opts.drop_low_confidence:.0%} least confident hidden"
            + "".join(f"\n\n{line}" for line in shot_lines(shots or []))
            + ("\n\neach shot has its own world frame (its first frame) and scale" if len(shots or []) > 1 else ""))


def cmd_view(args: argparse.Namespace) -> int:
    from geo4d.viewer import ViewOptions, log_reconstruction, open_recording
    from pipeline.report import check_fused, predictor_is_synthetic
    from storage.store import Store

    _check_output(args)
    store = Store(args.store, mode="r")
    check_fused(store, args.video)  # one-line StoreError: unknown video, not fused
    info, synthetic = store.video_info(args.video), predictor_is_synthetic(store, args.video)
    opts = ViewOptions(color=args.color, max_points=args.max_points, drop_low_confidence=args.drop_low_confidence)
    if synthetic:
        print("predictor: SYNTHETIC test instrument — predictions are derived from ground truth, not from the network")
    geometry, frames = store.read_fused(args.video), store.read_frames(args.video)
    rec, url = open_recording(args.video, save=args.save, web=args.web, web_port=args.web_port,
                              grpc_port=args.grpc_port, open_browser=has_display())
    log_reconstruction(rec, geometry, frames, fps=info.fps, opts=opts,
                       description=_description(args.video, info, synthetic, opts, store.read_shot_scores(args.video)))
    rec.flush()
    if args.save:
        print(f"recording of {args.video} ({info.n_frames} frames): {args.save} (open it with `rerun {args.save}`)")
    if url:
        print(f"web viewer: {url}\nserving until interrupted (Ctrl-C)", flush=True)
        _serve_forever()
    rec.disconnect()
    return 0


def _serve_forever() -> None:
    """Keep the process (and so the servers) alive until Ctrl-C, the normal end of ``--web``."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def register(sub: argparse._SubParsersAction) -> None:
    from geo4d.viewer import COLOR_MODES, DEFAULT_DROP_LOW_CONFIDENCE, DEFAULT_MAX_POINTS

    p = sub.add_parser("view", help="interactive 3D view (Rerun) of a fused video: point clouds over time, camera "
                                    "path and frusta, time slider (default: the native viewer; see docs/viewer.md)")
    p.add_argument("store", help="store path or URL (read only)")
    p.add_argument("--video", required=True, help="video id in the store (no default; `geo4d status STORE` lists them)")
    p.add_argument("--color", choices=COLOR_MODES, default="rgb",
                   help="colour the points by the frame's RGB or by fused confidence (viridis) (default: rgb)")
    p.add_argument("--max-points", type=int, default=DEFAULT_MAX_POINTS,
                   help=f"at most this many points per frame, evenly spaced (default: {DEFAULT_MAX_POINTS})")
    p.add_argument("--drop-low-confidence", type=float, default=DEFAULT_DROP_LOW_CONFIDENCE, metavar="FRACTION",
                   help="hide this fraction of the video's valid points, the least confident "
                        f"(default: {DEFAULT_DROP_LOW_CONFIDENCE})")
    p.add_argument("--save", metavar="FILE.rrd",
                   help="write the recording to FILE.rrd instead of opening the native viewer (default: not saved)")
    p.add_argument("--web", action="store_true",
                   help="serve Rerun's web viewer and print its address, until Ctrl-C (default: off)")
    p.add_argument("--web-port", type=int, default=WEB_PORT, help=f"--web: HTTP port of the web viewer (default: {WEB_PORT})")
    p.add_argument("--grpc-port", type=int, default=GRPC_PORT,
                   help=f"--web: port of the gRPC server the web viewer reads the recording from (default: {GRPC_PORT})")
    p.set_defaults(func=cmd_view)
