"""Archive runs: many videos through decode → shots → sample-windows → fuse → evaluate, on a Dask cluster.

``reconstruct_archive`` is what ``geo4d archive`` and the ``nightly-archive`` deployment both call: its
cluster settings are parameters, it builds the task runner from them and runs ``archive-videos`` on it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, replace

from prefect import flow
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from geo4d.framing import plan_framing
from geo4d.fusion import FusionConfig
from pipeline.predictors import PredictorSpec, parse_predictor_spec
from pipeline.shots import ShotSettings
from storage.manifest import write_manifest
from storage.sources import parse_intrinsics, plan_archive
from storage.store import Store
from tasks.archive import (decode_video_task, evaluate_video_task, fuse_video_task, rejected_summary,
                           report_video_task, sample_windows_task, shots_video_task, unfinished_summary)
from tasks.cluster import archive_task_runner, sampling_placement
from tasks.progress import advance, announce

_TABLE_KEYS = ("video_id", "source", "status", "failed_stage", "error", "windows_predicted")


@flow(name="reconstruct-archive", log_prints=True)
def reconstruct_archive(
    sources: list[str],
    store: str,
    predictor: PredictorSpec | None = None,
    fusion: FusionConfig | None = None,
    evaluate: bool = True,
    storage_options: dict | None = None,
    max_gpu_tasks: int | None = None,
    dask_address: str | None = None,
    workers: int = 2,
    gpus: int = 0,
    overwrite: bool = False,
    report: bool = True,
    resize: str = "crop",
    intrinsics: str | list[float] | None = None,
    shots: dict | None = None,
) -> dict:
    """Reconstruct every video of ``sources`` into ``store``; finished stages are skipped on reruns.

    ``resize`` brings frames to the network size (:mod:`geo4d.framing`); ``intrinsics``
    (``"fx,fy,cx,cy"``, source pixels) fixes K for every video whose manifest row gives none.
    ``shots``: :class:`pipeline.shots.ShotSettings` fields (default PySceneDetect; ``{"detector": "off"}``).

    Cluster: ``dask_address`` (an existing scheduler; its workers' ``GPU`` resources place the
    sampling), else ``gpus`` local GPU worker processes plus ``workers`` CPU workers, else
    ``workers`` local in-process workers (0: no Dask, Prefect's thread pool). ``max_gpu_tasks``
    bounds how many videos sample at once where no worker declares GPUs. ``overwrite`` recomputes
    stages finished with other settings (otherwise such a video fails with the differing setting).
    ``report`` draws each complete video's ``STORE/reports/<id>.png`` (a failure is a warning).
    """
    runner = archive_task_runner(dask_address=dask_address, workers=workers, gpus=gpus)
    videos = archive_videos if runner is None else archive_videos.with_options(task_runner=runner)
    return videos(sources, store, predictor=predictor, fusion=fusion, evaluate=evaluate,
                  storage_options=storage_options, max_gpu_tasks=max_gpu_tasks, overwrite=overwrite, report=report,
                  resize=resize, intrinsics=intrinsics, shots=shots)


@flow(name="archive-videos", log_prints=True)
def archive_videos(
    sources: list[str],
    store: str,
    predictor: PredictorSpec | None = None,
    fusion: FusionConfig | None = None,
    evaluate: bool = True,
    storage_options: dict | None = None,
    max_gpu_tasks: int | None = None,
    overwrite: bool = False,
    report: bool = True,
    resize: str = "crop",
    intrinsics: str | list[float] | None = None,
    shots: dict | None = None,
) -> dict:
    """Per video: decode → shots → sample-windows (GPU placement) → fuse → evaluate, each its own task.

    A video that fails permanently is recorded with its reason and the others go on. Writes
    ``STORE/manifest.parquet`` and a table artifact of per-video results.
    """
    predictor = parse_predictor_spec(predictor)
    plan_framing((1, 1), (1, 1), resize)  # an unknown resize mode stops the run before any write
    shots = ShotSettings.parse(shots, what="shots").model_dump()  # so do unknown shot settings
    if intrinsics is not None:
        intrinsics = ",".join(map(str, parse_intrinsics(intrinsics)))
    entries, rejected = plan_archive(sources)  # ids settled (conflicts refused) before any write
    entries = [e if e.intrinsics or intrinsics is None else replace(e, intrinsics=intrinsics) for e in entries]
    Store(store, storage_options=storage_options)  # refuse a store of another layout before any work
    placement = sampling_placement(max_gpu_tasks)
    announce(f"{len(entries)} video(s), {len(rejected)} rejected source row(s), {placement.describe()}")
    if entries:
        advance("videos", 0, len(entries), "started")
    run = dict(store=store, predictor=predictor, fusion=fusion, evaluate=evaluate,
               storage_options=storage_options, placement=placement, overwrite=overwrite, report=report,
               resize=resize, shots=shots)
    chains = [(asdict(e), _submit_chain(asdict(e), **run)) for e in entries]
    results = _collect(chains) + [rejected_summary(asdict(r)) for r in rejected]
    order = {e.path: i for i, e in enumerate(entries)}
    results.sort(key=lambda r: order.get(r["source"], len(order)))
    manifest = write_manifest(Store(store, storage_options=storage_options), storage_options)
    create_table_artifact(key="archive-results", table=[{k: r[k] for k in _TABLE_KEYS} for r in results],
                          description=f"geo4d archive run into {store}")
    return {**_run_summary(results, manifest), "placement": placement.describe()}


def _submit_chain(source: dict, *, store, predictor, fusion, evaluate, storage_options, placement,
                  overwrite, report=True, resize="crop", shots=None) -> dict:
    """Submit one video's tasks, each fed the summary of the one before; ``{stage: future}``."""
    decoded = decode_video_task.submit(source, store, predictor, storage_options, overwrite, resize)
    found = shots_video_task.submit(decoded, store, shots, storage_options, overwrite)
    with placement.annotate():
        sampled = sample_windows_task.submit(found, store, predictor, storage_options, placement.bound, overwrite)
    chain = {"decode": decoded, "shots": found, "windows": sampled,
             "fuse": fuse_video_task.submit(sampled, store, fusion, storage_options, overwrite)}
    if evaluate:
        chain["evaluate"] = evaluate_video_task.submit(chain["fuse"], store, storage_options, overwrite)
    if report:
        chain["report"] = report_video_task.submit(list(chain.values())[-1], store, storage_options)
    return chain


def _collect(chains: list[tuple[dict, dict]]) -> list[dict]:
    """Wait for every video's last task, printing ``[k/N] id (source): ok`` as each finishes."""
    results = []
    progress_id = create_progress_artifact(progress=0.0, key="archive-progress",
                                           description=f"videos done of {len(chains)}")
    last = {list(chain.values())[-1]: (source, chain) for source, chain in chains}
    windows = failed = 0
    for k, fut in enumerate(as_completed(list(last)), 1):
        res = _chain_result(*last[fut])
        results.append(res)
        windows += res["windows_predicted"]
        failed += res["status"] != "complete"
        update_progress_artifact(progress_id, progress=100.0 * k / len(chains),
                                 description=f"{k}/{len(chains)} videos done, {windows} windows sampled")
        state = "ok" if res["status"] == "complete" else f"FAILED at {res['failed_stage']}: {res['error']}"
        announce(f"[{k}/{len(chains)}] {res['video_id']} ({res['source']}): {state}")
        advance("videos", k, len(chains), f"{k - failed} ok, {failed} failed, {windows} windows sampled")
    return results


def _chain_result(source: dict, chain: dict) -> dict:
    """The video's summary from its last task; where a task ended without a result (a transient fault
    past its retries, a lost worker), the video failed at that task's stage with its error."""
    for fut in chain.values():
        fut.wait()  # the future's own final state, not the API's view of it (which may lag)
    if "report" in chain and not chain["report"].state.is_completed():  # a figure never fails the video
        error = _state_error(chain["report"].state)
        chain = {k: v for k, v in chain.items() if k != "report"}
        if list(chain.values())[-1].state.is_completed():
            return dict(list(chain.values())[-1].result(), report=None, report_error=error)
    final = list(chain.values())[-1]
    if final.state.is_completed():
        return final.result()
    for stage, fut in chain.items():
        if not fut.state.is_completed():
            return unfinished_summary(source, stage, _state_error(fut.state))
    return final.result()


def _state_error(state) -> str:
    """One line naming the exception a task ended with (Prefect's message when its data is gone)."""
    try:
        error = state.result(raise_on_failure=False) if state.is_final() else None
    except Exception:  # noqa: BLE001 — result not persisted (fetched from the API): use the message
        error = None
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else (state.message or state.name)
    return str(text).removeprefix("Task run encountered an exception ").splitlines()[0]


def _run_summary(results: list[dict], manifest: str) -> dict:
    """The run's summary: per-video results, totals, and network loads per worker process."""
    failed = [r for r in results if r["status"] != "complete"]
    loads = Counter(r["workers"]["windows"]["process"] for r in results if r.get("network_load"))
    return {"videos": results, "complete": len(results) - len(failed), "failed": len(failed), "manifest": manifest,
            "windows_sampled": sum(r["windows_predicted"] for r in results),
            "network_loads": sum(loads.values()), "network_loads_by_process": dict(loads),
            "network_load_seconds": sum(r["network_load"]["seconds"] for r in results if r.get("network_load"))}
