"""``geo4d export STORE OUTDIR [--format …]``: the 4D training dataset (docs/dataset.md) and standard
formats for other tools (docs/exports/)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    """Export; exit 1 when a damaged video was skipped (the others are exported). ``--dry-run``:
    print what would be exported and why the rest would not, write nothing."""
    from storage.export import ExportOptions, parse_formats
    from storage.store import Store

    formats = parse_formats(args.format)
    options = ExportOptions(max_points=args.max_points, depth_format=args.depth_format,
                            resolution="source" if args.source_resolution else "network")
    curation = _curation(args)
    store = Store(args.store, mode="r")
    if args.dry_run:
        return _dry_run(store, args, curation, formats)
    checked: dict[str, str | None] = {}  # each video's damage check, made once for all formats
    skipped = 0
    if "zarr" in formats:
        skipped += _export_zarr(store, args, checked, curation)
    shards = _export_webdataset(store, args, checked, curation) if "webdataset" in formats else None
    others = [f for f in formats if f not in ("zarr", "webdataset")]
    if others:
        skipped += _export_formats(store, args, others, options, checked, curation)
    _write_card(store, args, checked, curation, formats, shards)
    return 1 if skipped else 0


def _curation(args: argparse.Namespace):
    """The shot selection of the options (:class:`storage.curation.Curation`)."""
    from geo4d.curation import load_where, parse_splits
    from geo4d.errors import InputError
    from storage.curation import Curation

    if args.max_shots is not None and args.max_shots < 0:
        raise InputError(f"--max-shots {args.max_shots}: must be >= 0")
    where, source = load_where(args.where)
    return Curation(where, source, parse_splits(args.split), args.split_seed, args.max_shots)


def _plans(store, args: argparse.Namespace, checked: dict, curation):
    from storage.curation import plan_shots
    from storage.export import _chosen_videos, _damage

    return plan_shots(store, _chosen_videos(store, args.videos or None), curation,
                      lambda v: _damage(store, v, checked))


def _dry_run(store, args: argparse.Namespace, curation, formats: list[str]) -> int:
    """The plan, shot by shot, with what each format would get (the same shots for every format)."""
    from storage.curation import dry_run_lines

    plans, not_fused = _plans(store, args, {}, curation)
    print(f"filter: {curation.where.text}" + (f" (from {curation.filter_file})" if curation.filter_file else ""))
    sampling = {"unit": args.sample_unit, "clip_frames": args.clip_frames, "stride": args.clip_stride or args.clip_frames}
    for line in dry_run_lines(plans, not_fused, formats, sampling):
        print(line)
    return 0


def _export_zarr(store, args: argparse.Namespace, checked: dict, curation) -> int:
    """The Zarr dataset and its index; returns the number of damaged videos skipped."""
    from storage.export import export_dataset

    table = export_dataset(store, args.outdir, video_ids=args.videos or None, overwrite=args.overwrite,
                           progress=print, checked=checked, curation=curation, card=False)
    chosen = set(args.videos or store.video_ids())
    rows = table.to_pylist()
    damaged = {r["video_id"]: r for r in rows if (r["skipped"] or "").startswith("damaged: ") and r["video_id"] in chosen}
    dropped = [r for r in rows if r["skipped"] and not r["skipped"].startswith("damaged: ") and r["video_id"] in chosen]
    exported = sum(1 for r in rows if not r["skipped"])
    print(f"{exported} shot(s) in {args.outdir}/index.parquet"
          + (f"; {len(dropped)} shot(s) left out by the curation (column 'skipped')" if dropped else "")
          + (f"; {len(damaged)} damaged video(s) skipped (listed with their reason, column 'skipped')" if damaged else ""))
    for r in damaged.values():
        print(f"  SKIPPED {r['video_id']}: {r['skipped']}")
    return len(damaged)


def _export_webdataset(store, args: argparse.Namespace, checked: dict, curation) -> dict:
    """The training shards of the kept shots, one shard set per split (``OUTDIR/webdataset/<split>/``);
    the card's entry."""
    from storage.curation import export_webdataset
    from storage.export import _provenance

    plans, _ = _plans(store, args, checked, curation)
    out = export_webdataset(store, args.outdir, plans, unit=args.sample_unit, clip_frames=args.clip_frames,
                            stride=args.clip_stride or args.clip_frames, target_bytes=int(args.shard_mib * (1 << 20)),
                            seed=args.shard_seed, splits=list(curation.splits),
                            provenance=lambda v: _provenance(store, v, store.stage_record(v, "fuse") or {}))
    parts = [f"{name} {e['samples']} sample(s) in {e['shards']} shard(s) → {args.outdir}/{e['path']}/"
             for name, e in out["splits"].items()]
    print(f"webdataset: {out['samples']} sample(s) in {out['shards']} shard(s)" + (": " if parts else "")
          + "; ".join(parts))
    return out


def _write_card(store, args: argparse.Namespace, checked: dict, curation, formats: list[str], shards) -> None:
    from storage.curation import write_export_card

    plans, _ = _plans(store, args, checked, curation)
    print(f"dataset card: {write_export_card(store, args.outdir, plans, curation, formats, shards)}")


def _export_formats(store, args: argparse.Namespace, formats: list[str], options, checked: dict, curation) -> int:
    """The standard formats, per kept shot (a video of one shot, or each shot of a video of several:
    ``<video_id>-shot<k>``) — the shots the curation keeps, as in the Zarr dataset; one line per unit
    and format, then one per format; returns the number of damaged (unit, format) exports skipped."""
    from storage.export import export_formats

    rows = export_formats(store, args.outdir, formats, video_ids=args.videos or None, overwrite=args.overwrite,
                          options=options, progress=print, checked=checked, curation=curation)
    for fmt in formats:
        mine = [r for r in rows if r["format"] == fmt]
        done = sum(r["status"] in ("exported", "kept") for r in mine)
        damaged = [r for r in mine if r["status"] == "damaged"]
        dropped = sum(r["status"] == "dropped" for r in mine)
        print(f"{fmt}: {done} export unit(s) (video or shot) in {args.outdir}/{fmt}/"
              + (f"; {dropped} shot(s) left out by the curation" if dropped else "")
              + (f"; {len(damaged)} damaged export(s) skipped" if damaged else ""))
        for r in damaged:
            print(f"  SKIPPED {r['unit']} {fmt}: {r['reason']}")
    return sum(r["status"] == "damaged" for r in rows)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the fused videos of a store as a 4D dataset (Zarr per video + Parquet "
                       "index; default) and/or standard formats (COLMAP, nerfstudio, TUM, PLY, glTF, depth PNG/NPZ); "
                       "damaged videos are skipped (exit 1)",
                       description="Layouts: docs/dataset.md (zarr: OUTDIR/index.parquet, OUTDIR/videos/<id>.zarr) "
                                   "and docs/exports/ (the others: OUTDIR/<format>/<video_id>/, or <video_id>-shot<k>/ "
                                   "per shot of a video with several; webdataset: OUTDIR/webdataset/<split>/). Every "
                                   "format gets the same shots, those --where (or the default filter) and --max-shots "
                                   "keep (docs/curation.md). Every unit and format is written under a temporary name "
                                   "and renamed when complete.")
    p.add_argument("store", help="the reconstruction store (path or URL)")
    p.add_argument("outdir", help="output directory (created if missing)")
    p.add_argument("--format", action="append", metavar="FORMAT",
                   help="zarr, webdataset, colmap, nerfstudio, tum, ply, glb or depth; repeat it or give a comma-separated "
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
    _register_curation(p)
    p.set_defaults(func=cmd_export)


def _register_curation(p: argparse.ArgumentParser) -> None:
    """The shot selection and training-shard options (docs/curation.md)."""
    g = p.add_argument_group("curation (docs/curation.md)")
    g.add_argument("--where", metavar="EXPR|FILE.yaml",
                   help="keep the shots whose scores pass this expression, e.g. \"window_agreement < 0.05 and "
                        "rotation_deg > 5\" (comparisons, and/or/not over the score names), or a YAML file "
                        "('where: EXPR' or 'all: [EXPR, ...]'); 'none' keeps every shot (default: the default "
                        "filter, which drops corrupted reconstructions)")
    g.add_argument("--split", metavar="NAME=F,...",
                   help="split fractions by video (default train=0.8,validation=0.1,test=0.1); a video's shots "
                        "are all in one split, chosen by a hash of its id and --split-seed")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the split's hash (default 0)")
    g.add_argument("--max-shots", type=int, default=None, metavar="N",
                   help="export at most N shots (in video id, shot order)")
    g.add_argument("--dry-run", action="store_true",
                   help="print what would be exported and why the rest would not; write nothing")
    g.add_argument("--sample-unit", choices=["clip", "shot"], default="clip",
                   help="--format webdataset: each sample a clip of --clip-frames frames, or a whole shot")
    g.add_argument("--clip-frames", type=int, default=16, help="--format webdataset: frames per clip (default 16)")
    g.add_argument("--clip-stride", type=int, default=None,
                   help="--format webdataset: first frames of clips this far apart (default: --clip-frames)")
    g.add_argument("--shard-mib", type=float, default=256.0,
                   help="--format webdataset: target shard size in MiB (default 256)")
    g.add_argument("--shard-seed", type=int, default=0,
                   help="--format webdataset: seed of the shuffle within each split (default 0)")
