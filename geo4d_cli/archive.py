"""``geo4d archive`` and ``geo4d status``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from geo4d.errors import InputError


def cmd_archive(args: argparse.Namespace) -> int:
    from geo4d_cli.prefect_server import prefect_env
    from geo4d_cli.reconstruct import SYNTHETIC_NOTICE, fusion_option, predictor_spec, shots_option
    from storage.sources import plan_archive
    from storage.store import Store

    entries, rejected = plan_archive(args.sources)  # one-line errors (e.g. colliding ids) before any work
    Store(args.store)
    spec = predictor_spec(args)
    fusion = fusion_option(args.fusion)
    shots = shots_option(args)
    if spec.kind == "synthetic":
        print(SYNTHETIC_NOTICE)
    for opt, value, least in (("--workers", args.workers, 0), ("--gpus", args.gpus, 0), ("--max-gpu-tasks", args.max_gpu_tasks, 1)):
        if value is not None and value < least:
            raise InputError(f"{opt} {value}: must be >= {least}")
    if args.dask_address and args.gpus:
        raise InputError("--gpus starts local GPU workers; with --dask-address the cluster's workers declare "
                         "their GPUs (dask worker … --resources GPU=1)")
    prefect_env()
    import distributed  # noqa: F401  -- configures its loggers before Prefect's, as in a Dask worker (quiet)

    from flows.archive import reconstruct_archive
    from tasks.progress import close_console

    where = args.dask_address or (f"{args.gpus} local GPU worker(s) + {args.workers} CPU worker(s)" if args.gpus
                                  else f"{args.workers} local Dask worker(s)")
    print(f"{len(entries)} video(s) → {args.store} on {where}")
    t0 = time.perf_counter()
    result = reconstruct_archive(
        list(args.sources), args.store, predictor=spec, fusion=fusion, evaluate=not args.no_evaluate,
        max_gpu_tasks=args.max_gpu_tasks, dask_address=args.dask_address, workers=args.workers, gpus=args.gpus,
        overwrite=args.overwrite, report=not args.no_report, resize=args.resize, intrinsics=args.intrinsics,
        shots=shots,
    )
    close_console()
    dt = time.perf_counter() - t0
    if args.summary_json:
        _write_summary(Path(args.summary_json), result)
    print(f"\n{result['complete']} complete, {result['failed']} failed in {dt:.1f} s ({result['placement']}); "
          f"{result['windows_sampled']} windows sampled, network loaded {result['network_loads']}×; "
          f"manifest: {result['manifest']}")
    for r in result["videos"]:
        if r["status"] != "complete":
            print(f"  FAILED {r['video_id']} ({r['source']}) at {r['failed_stage']}: {r['error']}")
    _print_reports(args.store, result["videos"])
    return 1 if result["failed"] else 0


def _print_reports(store: str, videos: list[dict]) -> None:
    """Where the run's report figures are, and each one not written with why."""
    written = [r for r in videos if r.get("report")]
    if written:
        print(f"reports: {len(written)} in {store.rstrip('/')}/reports/ (<video id>.png)")
    for r in videos:
        if r.get("report_error"):
            print(f"  report not written for {r['video_id']}: {r['report_error']}")


def _write_summary(path: Path, result: dict) -> None:
    """The run's summary as JSON (atomically: temporary name, then rename)."""
    from geo4d.spec import jsonable

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(result), indent=1))
    os.replace(tmp, path)


def cmd_status(args: argparse.Namespace) -> int:
    from storage.manifest import manifest_table, write_manifest
    from storage.store import STAGES, Store

    store = Store(args.store, mode="r")
    rows = manifest_table(store).to_pylist()
    if not rows:
        print(f"{args.store}: no videos")
        return 0
    head = ["video", "source"] + list(STAGES) + ["shots"]
    body = [[r["video_id"], r["source"]] + [r[f"{st}_status"] for st in STAGES] + [_shots_cell(r)] for r in rows]
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for cells in body:
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"failed: {r['video_id']} ({r['source']}): {r['error']}")
    damaged = [r for r in rows if r["damage"] and not r["error"]]
    for r in [r for r in rows if r["damage"]]:
        for line in r["damage"].splitlines():
            print(f"damaged: {r['video_id']}: {line}")
    for r in rows:
        for line in (r["shot_skipped"] or "").splitlines():
            print(f"skipped shot: {r['video_id']}: frames {line}")
    # a video reconstructed without a shots stage (geo4d fuse, stores from before shots) is one shot
    done = sum(all(r[f"{st}_status"] == "complete" or (st == "shots" and r[f"{st}_status"] == "pending")
                   for st in STAGES) for r in rows)
    print(f"total: {len(rows)} videos, {done} complete, {len(failed)} failed, "
          f"{len(rows) - done - len(failed) - len(damaged)} pending" + (f", {len(damaged)} damaged" if damaged else ""))
    if damaged:
        print("damaged stages are recomputed by a rerun (geo4d reconstruct / archive / fuse)")
    try:
        print(f"manifest: {write_manifest(Store(args.store))}")
    except OSError as exc:  # a read-only store still gets its table printed
        print(f"manifest not written: {exc}")
    return 0


def _shots_cell(row: dict) -> str:
    """``2 (1 skipped)`` — the video's shots, or ``-`` before its shots are known."""
    if row["shots"] is None:
        return "-"
    return f"{row['shots']}" + (f" ({row['shots_skipped']} skipped)" if row["shots_skipped"] else "")


def register(sub: argparse._SubParsersAction) -> None:
    from geo4d_cli.reconstruct import NO_REPORT_HELP, add_framing_args, add_predictor_args, add_shot_args

    p = sub.add_parser("archive", help="reconstruct many videos into one store, concurrently on Dask, resumably")
    p.add_argument("sources", nargs="+", help="video files, directories, globs, or a Parquet/CSV manifest (path, video_id)")
    p.add_argument("--store", required=True, help="Zarr store path or URL the archive goes into (created if missing)")
    p.add_argument("--workers", type=int, default=2,
                   help="local CPU Dask workers (default 2; 0 = no Dask, one process)")
    p.add_argument("--gpus", type=int, default=0,
                   help="start N local GPU worker processes (one device each, CUDA_VISIBLE_DEVICES) that run the "
                        "window sampling, beside the CPU workers (default 0)")
    p.add_argument("--dask-address", help="an existing Dask scheduler, tcp://HOST:PORT; workers started with "
                   "--resources GPU=1 get the window sampling")
    p.add_argument("--max-gpu-tasks", type=int, default=None,
                   help="where no worker declares GPUs: at most K videos sampling windows at once (default: no bound)")
    p.add_argument("--fusion", help="fusion options as JSON")
    p.add_argument("--no-evaluate", action="store_true", help="skip the evaluation stage")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute stages finished with other settings (default: such videos stop and say what differs)")
    p.add_argument("--no-report", action="store_true", help=NO_REPORT_HELP)
    add_framing_args(p, per_video=", for every video whose manifest row has no 'intrinsics' column value")
    add_shot_args(p)
    p.add_argument("--summary-json", metavar="FILE",
                   help="also write the run's summary (per video: status, stage seconds, workers, network loads) as JSON")
    add_predictor_args(p)
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("status", help="per-video × per-stage table of a store; writes STORE/manifest.parquet")
    p.add_argument("store", help="Zarr store path or URL")
    p.set_defaults(func=cmd_status)
