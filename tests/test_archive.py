"""Archive runs: many videos on Dask, bad videos isolated and reported, status and manifest."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from conftest import write_synthetic_videos

from geo4d_cli import main
from geo4d.errors import InputError
from storage.sources import resolve_sources


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("archive")
    write_synthetic_videos(d, range(10, 16), name="clip_{i}")
    good = (d / "clip_0.mp4").read_bytes()
    (d / "corrupt.mp4").write_bytes(good[: len(good) // 3])
    (d / "notes.mp4").write_text("a text file renamed .mp4\n" * 20)
    return d


def test_sources_from_dirs_globs_and_manifests(archive_dir, tmp_path):
    import pyarrow as pa

    assert len(resolve_sources([str(archive_dir)])) == 8
    assert [s.path for s in resolve_sources([str(archive_dir / "clip_[01].mp4")])] == [
        str(archive_dir / "clip_0.mp4"), str(archive_dir / "clip_1.mp4")]
    pq.write_table(pa.table({"path": ["clip_2.mp4", str(archive_dir / "clip_3.mp4")], "video_id": ["two", None]}),
                   archive_dir / "m.parquet")
    got = resolve_sources([str(archive_dir / "m.parquet"), str(archive_dir / "clip_2.mp4")])
    assert [(s.path, s.video_id) for s in got] == [(str(archive_dir / "clip_2.mp4"), "two"),
                                                   (str(archive_dir / "clip_3.mp4"), None)]
    (archive_dir / "m.parquet").unlink()
    with pytest.raises(InputError, match="pattern matches no file"):
        resolve_sources([str(tmp_path / "*.mp4")])


def test_archive_completes_good_videos_and_reports_bad_ones(archive_dir, tmp_path, capsys, prefect_env):
    store = tmp_path / "a.zarr"
    rc = main(["archive", str(archive_dir), "--store", str(store), "--workers", "2", "--predictor", "synthetic"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "6 complete, 2 failed" in out
    assert "corrupt.mp4" in out and "notes.mp4" in out
    table = pq.read_table(store / "manifest.parquet").to_pylist()
    assert len(table) == 8
    by_source = {r["source"].rsplit("/", 1)[-1]: r for r in table}
    for i in range(6):
        r = by_source[f"clip_{i}.mp4"]
        assert [r[f"{s}_status"] for s in ("decode", "windows", "fuse", "evaluate")] == ["complete"] * 4
        assert r["n_frames"] == 20 and r["metrics"]
    for bad in ("corrupt.mp4", "notes.mp4"):
        r = by_source[bad]
        assert r["decode_status"] == "failed" and r["windows_status"] == "pending"
        assert "truncated" in r["error"] or "not a readable video" in r["error"] or "no video stream" in r["error"]
    assert main(["status", str(store)]) == 0
    status = capsys.readouterr().out
    assert "total: 8 videos, 6 complete, 2 failed, 0 pending" in status
    assert "failed:" in status and "notes.mp4" in status and "clip_3.mp4" in status
    # A rerun recomputes nothing for the finished videos.
    from storage.store import Store

    s = Store(store, mode="r")
    before = {v: s.stage_record(v, "windows") for v in s.video_ids() if s.is_complete(v, "windows")}
    assert main(["archive", str(archive_dir), "--store", str(store), "--workers", "1"]) == 1
    capsys.readouterr()
    after = {v: s.stage_record(v, "windows") for v in before}
    assert after == before and len(before) == 6


def _track_sampling(monkeypatch):
    """Wrap the windows stage to record the peak number of videos sampling at once."""
    import threading
    import time

    import pipeline.stages as stages

    active, peak, lock = [0], [0], threading.Lock()
    original = stages.windows_stage

    def tracked(*a, **k):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.3)  # make overlaps likely if the bound did not hold
            return original(*a, **k)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(stages, "windows_stage", tracked)
    return peak


def test_max_gpu_tasks_bounds_the_sampling_stage(archive_dir, tmp_path, monkeypatch, capsys, prefect_env):
    peak = _track_sampling(monkeypatch)
    srcs = [str(archive_dir / f"clip_{i}.mp4") for i in range(3)]
    rc = main(["archive", *srcs, "--store", str(tmp_path / "g.zarr"), "--workers", "2", "--max-gpu-tasks", "1",
               "--no-evaluate"])
    assert rc == 0, capsys.readouterr().out
    assert peak[0] == 1



@pytest.mark.parametrize("cluster", [{}, {"workers": 0}], ids=["as-deployed", "without-dask"])
def test_the_nightly_deployment_keeps_its_gpu_bound(cluster, archive_dir, tmp_path, monkeypatch, prefect_env):
    """The flow as a deployment runs it (entrypoint and parameters of prefect.yaml; only the paths and
    the predictor of this test replaced): K = 1, no two videos ever sample at once — on the
    deployment's Dask workers and without Dask (Prefect's thread pool) alike."""
    from pathlib import Path

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    root = Path(__file__).resolve().parents[1]
    dep = next(d for d in yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]
               if d["name"] == "nightly-archive")
    flow = load_flow_from_entrypoint(str(root / dep["entrypoint"]))
    params = {**dep["parameters"], **cluster, "sources": [str(archive_dir / f"clip_{i}.mp4") for i in range(3)],
              "store": str(tmp_path / "nightly.zarr"), "predictor": {"kind": "synthetic"}, "evaluate": False}
    assert params["max_gpu_tasks"] == 1 and params.get("workers", 2) == cluster.get("workers", 2)
    peak = _track_sampling(monkeypatch)
    result = flow(**flow.validate_parameters(params))
    assert result["complete"] == 3 and result["windows_sampled"] == 3 * 2
    assert peak[0] == 1
    if cluster.get("workers") == 0:
        assert all(v["workers"]["windows"]["worker"] is None for v in result["videos"])  # not on Dask


@pytest.mark.slow
def test_local_gpu_workers_sample_and_cpu_workers_do_the_rest(archive_dir, tmp_path, capsys, prefect_env):
    """``geo4d archive --gpus 1 --workers 1``: a GPU worker process (CUDA_VISIBLE_DEVICES=0, resource
    GPU=1) samples every video's windows; both worker processes record into this process's Prefect API."""
    import json

    srcs = [str(archive_dir / f"clip_{i}.mp4") for i in range(3)]
    rc = main(["archive", *srcs, "--store", str(tmp_path / "gpu.zarr"), "--gpus", "1", "--workers", "1",
               "--no-evaluate", "--summary-json", str(tmp_path / "summary.json")])
    assert rc == 0, capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] == 3
    for v in summary["videos"]:
        assert v["workers"]["windows"]["worker"] == "gpu-0"
        assert v["workers"]["windows"]["cuda_visible_devices"] == "0"
        assert v["workers"]["decode"]["worker"] in ("gpu-0", "cpu-0")
    import os

    assert all(not p.endswith(f":{os.getpid()}") for v in summary["videos"] for p in
               [v["workers"]["windows"]["process"]])  # sampled in the worker process, not here
    assert "sampling on 1 GPU slot(s)" in capsys.readouterr().out


def test_an_unforeseen_fault_or_a_task_past_its_retries_fails_that_video_only(archive_dir, tmp_path, monkeypatch,
                                                                               prefect_env):
    """A bug-like error in one video's fuse is recorded as that video's failure (store and summary);
    a transient fault that outlasts its retries ends that video at its stage; the others complete."""
    import flows.archive as archive_flow
    import pipeline.stages as stages
    from storage.store import Store

    srcs = [str(archive_dir / f"clip_{i}.mp4") for i in range(3)]
    fuse, windows = stages.fuse_stage, stages.windows_stage

    def fuse_breaks_on_clip_1(store, video_id, **kw):
        if store.video_info(video_id).source.endswith("clip_1.mp4"):
            raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")
        return fuse(store, video_id, **kw)

    def sampling_connection_lost_on_clip_2(store, video_id, *a, **kw):
        if store.video_info(video_id).source.endswith("clip_2.mp4"):
            raise ConnectionResetError("connection to the GPU host lost")
        return windows(store, video_id, *a, **kw)

    monkeypatch.setattr(stages, "fuse_stage", fuse_breaks_on_clip_1)
    monkeypatch.setattr(stages, "windows_stage", sampling_connection_lost_on_clip_2)
    monkeypatch.setattr(archive_flow, "sample_windows_task", archive_flow.sample_windows_task.with_options(retries=0))
    store = tmp_path / "f.zarr"
    result = archive_flow.reconstruct_archive(srcs, str(store), predictor={"kind": "synthetic"}, evaluate=False,
                                              workers=0)
    by = {v["source"].rsplit("/", 1)[-1]: v for v in result["videos"]}
    assert result["complete"] == 1 and result["failed"] == 2 and by["clip_0.mp4"]["status"] == "complete"
    assert (by["clip_1.mp4"]["failed_stage"], by["clip_1.mp4"]["error"]) == (
        "fuse", "TypeError: unsupported operand type(s) for +: 'NoneType' and 'int'")
    assert Store(store, mode="r").stage_record(by["clip_1.mp4"]["video_id"], "fuse")["status"] == "failed"
    assert by["clip_2.mp4"]["failed_stage"] == "windows"
    assert by["clip_2.mp4"]["error"] == "ConnectionResetError: connection to the GPU host lost"
