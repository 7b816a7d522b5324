"""A real multi-process cluster on 127.0.0.1: ``prefect server start``, ``dask scheduler``, a GPU-declaring
``dask worker --resources GPU=1`` and a plain one, and ``geo4d archive --dask-address`` with the network
(the tiny official-format fixture, a context file for its missing CLIP towers).

Checked: every ``sample-windows`` task ran on the GPU-declaring worker; the network was loaded at most
once per worker process; after SIGKILL of the GPU worker mid-run (and of the client), the rerun on a
new GPU worker samples only the missing windows; the outputs equal a direct in-process computation.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Child processes in their own sessions, killed as whole process groups."""

    def __init__(self, logs: Path):
        self.logs, self.procs = logs, {}

    def start(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self.procs[name]

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-3000:]

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)


def _wait_for(check, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _workers(address: str) -> dict:
    from distributed import Client

    with Client(address, timeout=10) as c:
        return {w["name"]: w.get("resources", {}) for w in c.scheduler_info()["workers"].values()}


def _done_windows(store: Path) -> dict[str, int]:
    from storage.store import Store

    try:
        s = Store(store, mode="r")
        return {v: (s.windows_progress(v) or {"done": 0})["done"] for v in s.video_ids()}
    except Exception:  # the store is being created
        return {}


@pytest.fixture
def network_files(reference_dir, tmp_path):
    """The tiny fixture checkpoint and a context file computed from its CLIP outputs."""
    from safetensors.torch import load_file

    from geo4d_model.context import write_context_file
    from geo4d_model.loader import load_official

    d = reference_dir / "fixtures" / "tiny"
    loaded = load_official(d / "config.yaml", d / "model.ckpt", d / "vae.ckpt")
    cases = load_file(str(d / "cases.safetensors"))
    ctx = loaded.network.context(cases["ddim.text_emb"], cases["ddim.image_tokens"]).detach()
    context = write_context_file(tmp_path / "context.safetensors", ctx, loaded.fingerprint)
    return {"config": d / "config.yaml", "checkpoint": d / "model.ckpt", "pointmap_vae": d / "vae.ckpt",
            "context": context}


def _videos(d: Path, n: int = 4) -> Path:
    from geo4d.synthetic import make_scene, render, write_video

    d.mkdir()
    for i in range(n):
        write_video(d / f"v{i}.mp4", render(make_scene(seed=70 + i, n_frames=20, height=32, width=48)).frames, fps=10)
    return d


def _start_cluster(procs: Processes, env: dict, scheduler: str) -> None:
    port = scheduler.rsplit(":", 1)[1]
    if "scheduler" not in procs.procs:
        procs.start("scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port,
                                  "--no-dashboard"], env)
    for name, extra in (("gpu-worker", ["--resources", "GPU=1"]), ("cpu-worker", [])):
        if name not in procs.procs:
            procs.start(name, [str(BIN / "dask"), "worker", scheduler, "--name", name, "--nthreads", "1",
                               "--no-dashboard", *extra], env)
    _wait_for(lambda: _try(lambda: set(_workers(scheduler)) == {"gpu-worker", "cpu-worker"}), "2 Dask workers")


def _try(fn) -> bool:
    try:
        return fn()
    except OSError:
        return False


def test_archive_on_a_real_cluster_places_sampling_on_the_gpu_worker(network_files, tmp_path):
    api = f"http://127.0.0.1:{_free_port()}/api"
    scheduler = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api,
               PREFECT_LOGGING_LEVEL="CRITICAL", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    procs = Processes(tmp_path)
    try:
        procs.start("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                "--port", api.rsplit(":", 1)[1].split("/")[0], "--no-services", "--no-ui"], env)
        _wait_for(lambda: _healthy(api), "the Prefect server")
        _start_cluster(procs, env, scheduler)
        assert _workers(scheduler)["gpu-worker"] == {"GPU": 1}
        src, store = _videos(tmp_path / "videos"), tmp_path / "archive.zarr"
        cli = [sys.executable, "-m", "geo4d_cli", "archive", str(src), "--store", str(store),
               "--dask-address", scheduler, "--no-evaluate", "--image-size", "32x48",
               *[x for k, v in network_files.items() for x in (f"--{k.replace('_', '-')}", str(v))]]
        # 1. SIGKILL the GPU worker once some windows are stored, then the client.
        procs.start("archive-1", cli + ["--summary-json", str(tmp_path / "first.json")], env)
        _wait_for(lambda: sum(_done_windows(store).values()) >= 2 or procs.procs["archive-1"].poll() is not None,
                  "the first sampled windows", timeout=300)
        assert procs.procs["archive-1"].poll() is None, procs.log("archive-1")
        procs.kill("gpu-worker")
        procs.kill("archive-1")
        done_before = _done_windows(store)
        assert 0 < sum(done_before.values()) < 8, done_before
        # 2. A new GPU worker; the rerun completes, sampling only what is missing.
        _start_cluster(procs, env, scheduler)
        rerun = procs.start("archive-2", cli + ["--summary-json", str(tmp_path / "summary.json")], env)
        assert rerun.wait(timeout=400) == 0, procs.log("archive-2")
        summary = json.loads((tmp_path / "summary.json").read_text())
    finally:
        procs.close()
    assert summary["complete"] == 4
    for v in summary["videos"]:
        assert v["workers"]["windows"]["worker"] == "gpu-worker", v["workers"]
        assert done_before.get(v["video_id"], 0) + v["windows_predicted"] == 2, (v, done_before)
    assert {v["workers"]["decode"]["worker"] for v in summary["videos"]} <= {"gpu-worker", "cpu-worker"}
    loads = summary["network_loads_by_process"]
    assert summary["network_loads"] == 1 and list(loads.values()) == [1], loads  # the one GPU worker, once
    _equals_a_direct_computation(store, network_files, [v["video_id"] for v in summary["videos"]][:2])


def _equals_a_direct_computation(store_path: Path, files: dict, video_ids: list[str]) -> None:
    """The cluster's windows and fused outputs equal the stages run in this process on the same spec
    (with one torch thread, as in a Dask worker, so that reductions add up in the same order)."""
    import torch

    from pipeline import stages
    from pipeline.predictors import parse_predictor_spec
    from storage.store import Store

    spec = parse_predictor_spec({"kind": "geo4d", **{k: str(v) for k, v in files.items()}, "image_size": [32, 48]})
    cluster = Store(store_path, mode="r")
    local = Store(store_path.with_name("local.zarr"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for vid in video_ids:
            _compare_video(local, cluster, vid, spec, stages)
    finally:
        torch.set_num_threads(threads)


def _compare_video(local, cluster, vid: str, spec, stages) -> None:
    """One video: same windows fingerprint, same windows, same fused geometry."""
    stages.decode_stage(local, cluster.video_info(vid).source, video_id=vid, size=(32, 48))
    stages.windows_stage(local, vid, spec)
    stages.fuse_stage(local, vid)
    assert local.stage_record(vid, "windows")["fingerprint"] == cluster.stage_record(vid, "windows")["fingerprint"]
    ours, theirs = local.windows(vid)[0], cluster.windows(vid)[0]
    for name in ours:
        assert np.allclose(ours[name][:], theirs[name][:], rtol=1e-5, atol=1e-6), (vid, name)
    a, b = local.read_fused(vid), cluster.read_fused(vid)
    for name in ("depth", "world_from_cam", "intrinsics"):
        assert np.allclose(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-5), (vid, name)
