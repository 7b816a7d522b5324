"""``geo4d export STORE OUTDIR``: the 4D training dataset (docs/dataset.md)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    from storage.export import export_dataset
    from storage.store import Store

    table = export_dataset(Store(args.store, mode="r"), args.outdir, video_ids=args.videos or None,
                           overwrite=args.overwrite, progress=print)
    print(f"{table.num_rows} video(s) in {args.outdir}/index.parquet")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the fused videos of a store as a 4D dataset (Zarr per video + Parquet index)")
    p.add_argument("store")
    p.add_argument("outdir")
    p.add_argument("--videos", nargs="+", help="only these video ids")
    p.add_argument("--overwrite", action="store_true", help="rewrite videos already exported from the same result")
    p.set_defaults(func=cmd_export)
