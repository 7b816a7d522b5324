"""``geo4d export STORE OUTDIR [--format …]``: the 4D training dataset (docs/dataset.md) and standard
formats for other tools (docs/exports/)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    """Export; exit 1 when a damaged video was skipped (the others are exported)."""
    from storage.export import ExportOptions, parse_formats
    from storage.store import Store

    formats = parse_formats(args.format)
    options = ExportOptions(max_points=args.max_points, depth_format=args.depth_format,
                            resolution="source" if args.source_resolution else "network")
    store = Store(args.store, mode="r")
    checked: dict[str, str | None] = {}  # each video's damage check, made once for all formats
    skipped = 0
    if "zarr" in formats:
        skipped += _export_zarr(store, args, checked)
    others = [f for f in formats if f != "zarr"]
    if others:
        skipped += _export_formats(store, args, others, options, checked)
    return 1 if skipped else 0


def _export_zarr(store, args: argparse.Namespace, checked: dict) -> int:
    """The Zarr dataset and its index; returns the number of damaged videos skipped."""
    from storage.export import export_dataset

    table = export_dataset(store, args.outdir, video_ids=args.videos or None, overwrite=args.overwrite,
                           progress=print, checked=checked)
    chosen = set(args.videos or store.video_ids())
    skipped = [r for r in table.to_pylist() if r["skipped"] and r["video_id"] in chosen]
    exported = table.num_rows - sum(1 for r in table.to_pylist() if r["skipped"])
    print(f"{exported} video(s) in {args.outdir}/index.parquet"
          + (f"; {len(skipped)} damaged video(s) skipped (listed with their reason, column 'skipped')" if skipped else ""))
    for r in skipped:
        print(f"  SKIPPED {r['video_id']}: {r['skipped']}")
    return len(skipped)


def _export_formats(store, args: argparse.Namespace, formats: list[str], options, checked: dict) -> int:
    """The per-video formats; one line per video and format, then one per format; returns the number of
    damaged (video, format) exports skipped."""
    from storage.export import export_formats

    rows = export_formats(store, args.outdir, formats, video_ids=args.videos or None, overwrite=args.overwrite,
                          options=options, progress=print, checked=checked)
    for fmt in formats:
        mine = [r for r in rows if r["format"] == fmt]
        done = sum(r["status"] in ("exported", "kept") for r in mine)
        damaged = [r for r in mine if r["status"] == "damaged"]
        print(f"{fmt}: {done} video(s) in {args.outdir}/{fmt}/"
              + (f"; {len(damaged)} damaged video(s) skipped" if damaged else ""))
        for r in damaged:
            print(f"  SKIPPED {r['video_id']} {fmt}: {r['reason']}")
    return sum(r["status"] == "damaged" for r in rows)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the fused videos of a store as a 4D dataset (Zarr per video + Parquet "
                       "index; default) and/or standard formats (COLMAP, nerfstudio, TUM, PLY, glTF, depth PNG/NPZ); "
                       "damaged videos are skipped (exit 1)",
                       description="Layouts: docs/dataset.md (zarr: OUTDIR/index.parquet, OUTDIR/videos/<id>.zarr) "
                                   "and docs/exports/ (the others: OUTDIR/<format>/<video_id>/). Every video and "
                                   "format is written under a temporary name and renamed when complete.")
    p.add_argument("store", help="the reconstruction store (path or URL)")
    p.add_argument("outdir", help="output directory (created if missing)")
    p.add_argument("--format", action="append", metavar="FORMAT",
                   help="zarr, colmap, nerfstudio, tum, ply, glb or depth; repeat it or give a comma-separated "
                        "list for several (default: zarr)")
    p.add_argument("--depth-format", choices=["png", "npz"], default="png",
                   help="--format depth: 16-bit PNGs + scale.json, or one float32 NPZ (default: png)")
    p.add_argument("--source-resolution", action="store_true",
                   help="--format depth: depth maps at the upright source video's resolution (edge-preserving "
                        "upsampling; K in source pixels; pixels cropped away are 0) instead of the network's")
    p.add_argument("--max-points", type=int, default=None, metavar="N",
                   help="point budget per video of colmap, nerfstudio, ply and glb (default: 100000 for colmap and "
                        "nerfstudio, 200000 for glb, 1000000 for ply)")
    p.add_argument("--videos", nargs="+", help="only these video ids (default: every video)")
    p.add_argument("--overwrite", action="store_true",
                   help="rewrite videos already exported from the same result (default: keep them)")
    p.set_defaults(func=cmd_export)
