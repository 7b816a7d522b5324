"""``geo4d export STORE OUTDIR``: the 4D training dataset (docs/dataset.md)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    """Export; exit 1 when a damaged video was skipped (the others are exported)."""
    from storage.export import export_dataset
    from storage.store import Store

    store = Store(args.store, mode="r")
    table = export_dataset(store, args.outdir, video_ids=args.videos or None, overwrite=args.overwrite, progress=print)
    chosen = set(args.videos or store.video_ids())
    skipped = [r for r in table.to_pylist() if r["skipped"] and r["video_id"] in chosen]
    exported = table.num_rows - sum(1 for r in table.to_pylist() if r["skipped"])
    print(f"{exported} video(s) in {args.outdir}/index.parquet"
          + (f"; {len(skipped)} damaged video(s) skipped (listed with their reason, column 'skipped')" if skipped else ""))
    for r in skipped:
        print(f"  SKIPPED {r['video_id']}: {r['skipped']}")
    return 1 if skipped else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the fused videos of a store as a 4D dataset (Zarr per video + Parquet "
                       "index); damaged videos are skipped (exit 1)")
    p.add_argument("store")
    p.add_argument("outdir")
    p.add_argument("--videos", nargs="+", help="only these video ids")
    p.add_argument("--overwrite", action="store_true", help="rewrite videos already exported from the same result")
    p.set_defaults(func=cmd_export)
