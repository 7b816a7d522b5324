"""``geo4d metrics poses|depth|report`` and ``geo4d evaluate`` (benchmark runs)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from geo4d.errors import InputError

DEPTH_DATASETS = ("sintel", "bonn", "kitti", "generic")
_ALIGN_CHOICES = {"sim3": "sim3", "se3": "se3", "none": None}
_DEPTH_ALIGN = {"exact": "scale_shift_l1", "official": "scale_shift_l1_adam", "scale": "scale_l1",
                "median": "median", "none": None}


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("metrics", help="metrics of files you already have (TUM trajectories, depth maps); result tables")
    msub = m.add_subparsers(dest="metrics_command", metavar="WHAT")
    msub.required = True

    p = msub.add_parser("poses", help="ATE / RPE of a TUM trajectory against ground truth (same numbers as evo)",
                        description="ATE = RMSE of camera-centre errors after alignment (evo_ape -as); "
                                    "RPE between consecutive associated poses, translation and rotation in "
                                    "degrees (evo_rpe -as --delta 1 --delta_unit f). Timestamps are associated "
                                    "as evo does (nearest, within --max-diff).")
    p.add_argument("--gt", required=True, help="ground-truth TUM file (timestamp tx ty tz qx qy qz qw)")
    p.add_argument("--est", required=True, help="estimated TUM file")
    p.add_argument("--align", choices=list(_ALIGN_CHOICES), default="sim3",
                   help="sim3 (Umeyama with scale, the benchmarks' setting), se3, or none")
    p.add_argument("--max-diff", type=float, default=0.01, help="max timestamp difference for association (s)")
    p.add_argument("--offset", type=float, default=0.0, help="time offset added to the estimate's stamps (s)")
    p.add_argument("--backend", choices=["geo4d", "evo"], default="geo4d",
                   help="geo4d (this package's implementation) or evo itself (cross-check)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_poses)

    d = msub.add_parser("depth", help="video-depth metrics (Abs Rel, δ<1.25, …) of depth maps you already have",
                        description="One scale and shift for the whole sequence (the benchmarks' protocol), "
                                    "predictions resized (bicubic) to the ground truth's resolution.")
    d.add_argument("--gt", required=True, nargs="+",
                   help="ground-truth depth: a directory or files (.dpt, 16-bit .png, .npy, .npz)")
    d.add_argument("--pred", required=True, nargs="+",
                   help="predicted depth: a directory or files (.npy/.npz (H,W) or (T,H,W), .dpt, 16-bit .png)")
    d.add_argument("--dataset", choices=DEPTH_DATASETS, default="generic",
                   help="protocol settings and GT PNG scale: sintel/bonn (cap 70 m), kitti (no cap), generic")
    d.add_argument("--align", choices=list(_DEPTH_ALIGN), default=None,
                   help="exact (L1 scale+shift, default for generic), official (the reference Adam loop, "
                        "default for sintel/bonn/kitti), scale, median, none")
    d.add_argument("--max-depth", type=float, default=None, help="generic: GT valid below this depth")
    d.add_argument("--post-clip-max", type=float, default=None, help="generic: clip aligned predictions")
    d.add_argument("--gt-scale", type=float, default=None, help="GT PNG: value / scale = depth (default by dataset)")
    d.add_argument("--pred-scale", type=float, default=None, help="predicted PNG: value / scale = depth")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=cmd_depth)

    r = msub.add_parser("report", help="paper tables with our benchmark results (docs/benchmarks.md)")
    r.add_argument("results", nargs="+", help="results tables (.parquet) or directories of them")
    r.add_argument("--out", help="write the page here (e.g. docs/benchmarks.md) instead of printing it")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("evaluate", help="run a benchmark (Sintel, Bonn, KITTI, TUM) through reconstruction and its protocol",
                       description="Each sequence is reconstructed into STORE (resumable), evaluated with the "
                                   "dataset's protocol, and one Parquet table + Markdown summary is written "
                                   "per run (default <STORE>.results/).")
    e.add_argument("--dataset", required=True, choices=["sintel", "bonn", "kitti", "tum"],
                   help="benchmark dataset whose protocol is run")
    e.add_argument("--root", required=True, help="benchmark directory (native or prepared layout, docs/evaluation.md)")
    e.add_argument("--store", required=True, help="reconstruction store (path or URL)")
    e.add_argument("--sequences", help="comma-separated subset of sequences")
    e.add_argument("--results", help="results directory (default <STORE>.results)")
    e.add_argument("--run-name", help="name of the results table (default <dataset>-<predictor>-<UTC time>)")
    e.add_argument("--depth-align", choices=["official", "exact"], default="official",
                   help="official: the reference Adam loop (reproduces published numbers); exact: exact L1 fit")
    e.add_argument("--label", help="method name in the tables")
    e.add_argument("--input-size", help="WxH fed to the predictor instead of the protocol's size (a deviation, "
                                        "recorded in the table; for quick checks)")
    from geo4d_cli.reconstruct import add_predictor_args

    add_predictor_args(e)
    e.set_defaults(func=cmd_evaluate)


# ---- poses -----------------------------------------------------------------------------------------
def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def cmd_poses(args: argparse.Namespace) -> int:
    from geo4d.metrics.trajectory import evaluate_tum_files, evaluate_tum_files_evo

    align = _ALIGN_CHOICES[args.align]
    fn = evaluate_tum_files_evo if args.backend == "evo" else evaluate_tum_files
    m = fn(args.gt, args.est, align, max_diff=args.max_diff, offset=args.offset)
    out = {"ate": _num(m["ate"]), "rpe_trans": _num(m["rpe_trans"]), "rpe_rot": _num(m["rpe_rot"]),
           "n_associated": int(m["n_associated"]), "align": args.align}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"associated poses : {out['n_associated']}")
        print(f"ATE  (RMSE, {args.align}) : {out['ate']:.6f}")
        print(f"RPE translation  : {out['rpe_trans']:.6f}")
        print(f"RPE rotation (°) : {out['rpe_rot']:.6f}")
    return 0


# ---- depth -----------------------------------------------------------------------------------------
def _expand(items: list[str], what: str) -> list[Path]:
    files: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in (".dpt", ".png", ".npy", ".npz"))
            if not found:
                raise InputError(f"{p}: no depth files (.dpt, .png, .npy, .npz) in this {what} directory")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such {what} file or directory")
    return files


def _read_depth_file(p: Path, png_scale: float | None):
    import numpy as np

    from geo4d.datasets.formats import read_depth_png, read_dpt

    suf = p.suffix.lower()
    if suf == ".dpt":
        return read_dpt(p)[None]
    if suf == ".png":
        if png_scale is None:
            raise InputError(f"{p}: a PNG depth map needs its scale (--gt-scale / --pred-scale)")
        return read_depth_png(p, png_scale)[None]
    try:
        if suf == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "depth" if "depth" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise InputError(f"{p}: several arrays ({keys[:4]}) and none named 'depth'")
                a = z[key]
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: not a readable NumPy file ({exc})") from exc
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"{p}: expected a depth map (H, W) or a sequence (T, H, W), got shape {a.shape}")
    return a


def _read_depths(files: list[Path], png_scale: float | None):
    import numpy as np

    arrs = [_read_depth_file(f, png_scale) for f in files]
    shapes = {a.shape[1:] for a in arrs}
    if len(shapes) != 1:
        raise InputError(f"{files[0].parent}: depth maps of different sizes {sorted(shapes)}")
    return np.concatenate(arrs, axis=0)


def cmd_depth(args: argparse.Namespace) -> int:
    import numpy as np

    from geo4d.datasets.formats import KITTI_DEPTH_SCALE, TUM_DEPTH_SCALE, resize_depth_to
    from geo4d.metrics.depth import DEPTH_PROTOCOLS, depth_metrics

    gt_scale = args.gt_scale or {"bonn": TUM_DEPTH_SCALE, "kitti": KITTI_DEPTH_SCALE}.get(args.dataset)
    gt_files = _expand(args.gt, "ground-truth")
    pred_files = _expand(args.pred, "prediction")
    gt = _read_depths(gt_files, gt_scale)
    pred = _read_depths(pred_files, args.pred_scale)
    if len(pred) != len(gt):
        raise InputError(f"{args.pred[0]}: {len(pred)} predicted depth maps for {len(gt)} ground-truth maps ({args.gt[0]})")
    if not np.isfinite(pred).all():
        raise InputError(f"{args.pred[0]}: predictions contain NaN or inf")
    if pred.shape[1:] != gt.shape[1:]:
        pred = resize_depth_to(pred, gt.shape[1:])
    if args.dataset == "generic":
        align = _DEPTH_ALIGN[args.align or "exact"]
        settings = {"max_depth": args.max_depth, "post_clip_max": args.post_clip_max}
        kw = {}
    else:
        proto = DEPTH_PROTOCOLS[args.dataset]
        align = _DEPTH_ALIGN[args.align] if args.align else proto.align
        settings = {"max_depth": proto.max_depth, "post_clip_max": proto.post_clip_max}
        kw = {"adam_lr": proto.adam_lr, "adam_iters": proto.adam_iters}
    m = depth_metrics(pred, gt, align=align, **settings, **kw)
    out = {k: _num(v) for k, v in m.items()}
    out.update({"frames": int(len(gt)), "dataset": args.dataset, "align": align, **settings})
    if args.json:
        print(json.dumps(out))
    else:
        print(f"frames {len(gt)}, valid pixels {int(m['valid_pixels'])}, align {align} "
              f"(s = {m['scale']:.6g}, t = {m['shift']:.6g})")
        for k in ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1_25", "delta_1_25_2", "delta_1_25_3"):
            print(f"{k:>13} : {m[k]:.6f}")
    return 0


# ---- report ----------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from geo4d.metrics.benchmark import render_benchmarks_page
    from storage.results import list_result_files, read_results

    files: list[str] = []
    for r in args.results:
        files += list_result_files(r)
    if not files:
        raise InputError(f"{args.results[0]}: no results tables (.parquet)")
    latest: dict[tuple[str, str], tuple[str, dict]] = {}
    for f in files:
        rows, meta = read_results(f)
        mean = next((r for r in rows if r.get("row") == "mean"), None)
        if mean is None:
            continue
        key = (str(meta.get("method", "ours")), str(meta.get("dataset", "")))
        stamp = str(meta.get("created_at", ""))
        if key not in latest or stamp >= latest[key][0]:
            latest[key] = (stamp, {**mean, "_source": f})
    ours: dict[str, dict[str, dict]] = {}
    for (method, ds), (_, row) in sorted(latest.items()):
        ours.setdefault(method, {})[ds] = row
    page = render_benchmarks_page(ours, sources=sorted({r["_source"] for _, r in latest.values()}))
    if args.out:
        Path(args.out).write_text(page)
        print(f"wrote {args.out} ({len(latest)} dataset result(s) from {len(files)} table(s))")
    else:
        sys.stdout.write(page)
    return 0


# ---- evaluate --------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    import time

    from geo4d_cli.prefect_server import prefect_env
    from geo4d_cli.reconstruct import SYNTHETIC_NOTICE, predictor_spec
    from geo4d.datasets import list_sequences

    root = Path(args.root)
    if not root.is_dir():
        raise InputError(f"--root {root}: no such directory")
    names = [s for s in (args.sequences or "").split(",") if s] or None
    available = list_sequences(args.dataset, root)  # fails fast on a wrong layout
    if names:
        unknown = [n for n in names if n not in available]
        if unknown:
            raise InputError(f"--sequences: {', '.join(unknown)} not found under {root} (have {', '.join(available[:6])}…)")
    size = None
    if args.input_size:
        try:
            size = [int(v) for v in args.input_size.lower().split("x")]
            assert len(size) == 2 and min(size) > 0
        except (ValueError, AssertionError):
            raise InputError(f"--input-size {args.input_size!r}: expected WxH, e.g. 576x256") from None
    if args.ground_truth:
        raise InputError("--ground-truth: not used by geo4d evaluate (each sequence's own ground truth is read from --root)")
    spec = predictor_spec(args)  # without --image-size, the network runs at the protocol's input size
    from storage.store import Store

    Store(args.store, mode="a")  # fail fast on a store of another layout
    if spec.kind == "synthetic":
        print(SYNTHETIC_NOTICE)
    if args.depth_align == "official" and args.dataset != "tum":
        import torch

        if not torch.cuda.is_available():
            print("note: the official depth-alignment loop (up to 5000 Adam steps per sequence) runs on the CPU "
                  "here, which is slow on full-resolution sequences; --depth-align exact takes seconds "
                  "(docs/evaluation.md compares the two)")
    prefect_env()
    from flows.evaluate import evaluate_benchmark

    t0 = time.perf_counter()
    res = evaluate_benchmark(args.dataset, str(root), args.store, predictor=spec, label=args.label, sequences=names,
                             results_dir=args.results, run_name=args.run_name,
                             depth_align=_DEPTH_ALIGN[args.depth_align], input_size=size)
    from geo4d.report import format_metrics_table

    table = {r["sequence"]: r for r in res["rows"]}
    print(format_metrics_table(table))
    print(f"{args.dataset}: {len(res['rows']) - 1} sequence(s) in {time.perf_counter() - t0:.1f} s; "
          f"table {res['table']}, summary {res['summary']}")
    if res["failed"]:
        print(f"error: {len(res['failed'])} sequence(s) failed: {', '.join(res['failed'])} (see the summary)",
              file=sys.stderr)
        return 1
    return 0
