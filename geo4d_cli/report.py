"""``geo4d report``: draw a fused video's report figure from the store into a PNG file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from geo4d.errors import InputError


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import draw_report, predictor_is_synthetic
    from storage.store import Store

    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"{out}: is a directory; give the PNG file to write")
    if not out.parent.is_dir():
        raise InputError(f"{out}: directory {out.parent} does not exist")
    store = Store(args.store, mode="r")
    png = draw_report(store, args.video)  # one-line StoreError: unknown video, not fused
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(png)
    os.replace(tmp, out)
    synthetic = " (predictor: SYNTHETIC test instrument)" if predictor_is_synthetic(store, args.video) else ""
    print(f"report of {args.video}{synthetic}: {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="draw a fused video's report figure (frames, inverse depth, confidence, "
                                      "camera path, metrics) from the store into a PNG file")
    p.add_argument("store", help="store path or URL (read only)")
    p.add_argument("--video", required=True, help="video id in the store (no default; `geo4d status STORE` lists them)")
    p.add_argument("out", metavar="OUT.png", help="PNG file to write (replaced if it exists)")
    p.set_defaults(func=cmd_report)
