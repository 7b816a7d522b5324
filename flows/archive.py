"""Archive runs: many videos through the per-video stages, concurrently on Dask."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from geo4d.fusion import FusionConfig
from pipeline.predictors import PredictorSpec, parse_predictor_spec
from storage.manifest import write_manifest
from storage.sources import resolve_sources
from storage.store import Store
from tasks.archive import reconstruct_one_task


@flow(name="reconstruct-archive", log_prints=True)
def reconstruct_archive(
    sources: list[str],
    store: str,
    predictor: PredictorSpec | None = None,
    fusion: FusionConfig | None = None,
    evaluate: bool = True,
    storage_options: dict | None = None,
    max_gpu_tasks: int | None = None,
) -> dict:
    """Reconstruct every video of ``sources`` into ``store``; finished stages are skipped on reruns.

    Each video is one task on the flow's task runner (a Dask cluster from the CLI); a video that
    fails permanently is recorded with its reason and the others go on. Writes
    ``STORE/manifest.parquet`` and a table artifact of per-video results. ``max_gpu_tasks`` bounds how
    many videos sample windows at once (the GPU stage); the CPU stages overlap with it.
    """
    predictor = parse_predictor_spec(predictor)
    entries = resolve_sources(sources)
    Store(store, storage_options=storage_options)  # refuse a store of another layout before any work
    futures = [reconstruct_one_task.submit(asdict(e), store, predictor, fusion, evaluate, storage_options,
                                           max_gpu_tasks) for e in entries]
    results = []
    progress_id = create_progress_artifact(progress=0.0, key="archive-progress",
                                           description=f"videos done of {len(futures)}")
    windows_sampled = 0
    for k, fut in enumerate(as_completed(futures), 1):
        res = fut.result()
        results.append(res)
        windows_sampled += int(res.get("windows_predicted") or 0)
        update_progress_artifact(progress_id, progress=100.0 * k / len(futures),
                                 description=f"{k}/{len(futures)} videos done, {windows_sampled} windows sampled")
        state = "ok" if res["status"] == "complete" else f"FAILED at {res['failed_stage']}: {res['error']}"
        print(f"[{k}/{len(futures)}] {res['video_id']} ({res['source']}): {state}")
    order = {e.path: i for i, e in enumerate(entries)}
    results.sort(key=lambda r: order.get(r["source"], 0))
    manifest = write_manifest(Store(store, storage_options=storage_options), storage_options)
    create_table_artifact(
        key="archive-results",
        table=[{k: r[k] for k in ("video_id", "source", "status", "failed_stage", "error", "windows_predicted")}
               for r in results],
        description=f"geo4d archive run into {store}",
    )
    failed = [r for r in results if r["status"] != "complete"]
    return {"videos": results, "complete": len(results) - len(failed), "failed": len(failed), "manifest": manifest,
            "windows_sampled": windows_sampled}
