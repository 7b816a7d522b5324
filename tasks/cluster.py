"""Where archive work runs: the Dask task runner of a run, GPU placement, and sampling bounds.

* :func:`archive_task_runner` — the task runner of an archive run from its cluster settings: an
  existing scheduler (``dask_address``), local GPU worker processes plus CPU workers (``gpus``), local
  in-process workers (``workers``), or none (Prefect's default thread pool).
* :func:`sampling_placement` — how the ``sample-windows`` tasks are placed: on a cluster whose workers
  declare ``GPU`` resources each task asks for ``{"GPU": 1}`` (Dask then runs at most one per GPU);
  otherwise ``max_gpu_tasks`` bounds them (:func:`sampling_slot`).
* :func:`sampling_slot` — that bound: a Dask ``Semaphore`` kept by the scheduler inside a Dask worker
  (cluster-wide), a semaphore of this process otherwise (Prefect's thread pool).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from geo4d.errors import InputError

__all__ = ["archive_task_runner", "local_gpu_cluster", "prefect_api_url", "SamplingPlacement", "sampling_placement",
           "sampling_slot", "worker_identity", "GPU_RESOURCE"]

#: The Dask worker resource GPU workers declare (``dask worker … --resources GPU=1``).
GPU_RESOURCE = "GPU"
_local_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def prefect_api_url() -> str:
    """The Prefect API this process talks to: ``PREFECT_API_URL``, else the temporary local server
    (started if needed) — what worker processes must point at to record into the same API."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide instance Prefect's client uses
    server.start()
    return server.api_url


def local_gpu_cluster(gpus: int, workers: int):
    """A local Dask cluster of ``gpus`` GPU worker processes (``CUDA_VISIBLE_DEVICES`` = one device
    each, resource ``GPU=1``, two threads: one samples, one runs a CPU stage meanwhile) and
    ``workers`` single-thread CPU worker processes, all recording into this process's Prefect API."""
    from distributed import Nanny, Scheduler, SpecCluster

    env = {"PREFECT_API_URL": prefect_api_url()}
    spec = {f"gpu-{i}": {"cls": Nanny, "options": {
        "nthreads": 2, "resources": {GPU_RESOURCE: 1}, "env": {**env, "CUDA_VISIBLE_DEVICES": str(i)}}}
        for i in range(gpus)}
    spec.update({f"cpu-{j}": {"cls": Nanny, "options": {"nthreads": 1, "env": dict(env)}} for j in range(workers)})
    return SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})


def archive_task_runner(dask_address: str | None = None, workers: int = 2, gpus: int = 0):
    """The task runner for these cluster settings (None: Prefect's default thread pool)."""
    from prefect_dask import DaskTaskRunner

    if workers < 0 or gpus < 0:
        raise InputError(f"workers={workers}, gpus={gpus}: must be >= 0")
    if dask_address:
        if gpus:
            raise InputError("gpus: local GPU workers and dask_address exclude each other "
                             "(a cluster declares its GPUs with `dask worker … --resources GPU=1`)")
        return DaskTaskRunner(address=dask_address)
    if gpus:
        return DaskTaskRunner(cluster_class=local_gpu_cluster, cluster_kwargs={"gpus": gpus, "workers": workers})
    if workers == 0:
        return None
    # Threads in one process: the workers share this process's Prefect API (worker processes would each
    # start a temporary Prefect server — docs/orchestration.md); NumPy/torch release the GIL.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": False,
                                          "dashboard_address": None})


@dataclass(frozen=True)
class SamplingPlacement:
    """How a run places its ``sample-windows`` tasks: Dask resources to ask for, or a bound."""

    gpus: int = 0                 # GPU resources declared by the cluster's workers (0: none)
    bound: int | None = None      # at most this many sampling at once (without GPU resources)

    def annotate(self):
        """Context for submitting a sampling task: asks for one GPU when the cluster has any."""
        if not self.gpus:
            return nullcontext()
        import dask

        return dask.annotate(resources={GPU_RESOURCE: 1})

    def describe(self) -> str:
        if self.gpus:
            return f"sampling on {self.gpus} GPU slot(s) (Dask resources)"
        return f"at most {self.bound} sampling at once" if self.bound else "sampling unbounded"


def _declared_gpus(task_runner) -> int:
    from prefect_dask import DaskTaskRunner

    if not isinstance(task_runner, DaskTaskRunner):
        return 0
    workers = task_runner.client.scheduler_info(n_workers=-1).get("workers", {})
    return int(sum(w.get("resources", {}).get(GPU_RESOURCE, 0) for w in workers.values()))


def sampling_placement(max_gpu_tasks: int | None = None) -> SamplingPlacement:
    """The placement of the current flow run's sampling tasks (call inside the flow)."""
    from prefect.context import get_run_context

    if max_gpu_tasks is not None and max_gpu_tasks < 1:
        raise InputError(f"max_gpu_tasks={max_gpu_tasks}: must be >= 1 (or None: no bound)")
    gpus = _declared_gpus(get_run_context().task_runner)
    return SamplingPlacement(gpus=gpus, bound=None if gpus else max_gpu_tasks)


@contextmanager
def sampling_slot(bound: int | None) -> Iterator[None]:
    """Hold one of ``bound`` sampling slots (None: no bound) while sampling.

    Inside a Dask worker the slots are a ``distributed.Semaphore`` kept by the scheduler, so the
    bound holds across the cluster; elsewhere (Prefect's thread pool) a semaphore of this process.
    """
    if not bound:
        yield
        return
    try:
        from distributed import Semaphore, get_client, get_worker

        get_worker()
        get_client()
    except (ImportError, ValueError):
        with _slots_lock:
            slot = _local_slots.setdefault(int(bound), threading.BoundedSemaphore(int(bound)))
        with slot:
            yield
        return
    with Semaphore(max_leases=int(bound), name=f"geo4d-sampling-{int(bound)}"):
        yield


def worker_identity() -> dict:
    """Which Dask worker (name, None outside one), which process (``host:pid``) and which GPUs it sees
    (``CUDA_VISIBLE_DEVICES``) run this."""
    try:
        from distributed import get_worker

        worker = str(get_worker().name)
    except (ImportError, ValueError):
        worker = None
    return {"worker": worker, "process": f"{socket.gethostname()}:{os.getpid()}",
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
