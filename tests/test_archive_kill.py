"""Kill an archive run (SIGKILL of its process group) partway; the rerun resumes without recompute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _done_windows(store: Path) -> dict[str, int]:
    import zarr

    from storage.store import Store

    out = {}
    try:
        s = Store(store, mode="r")
        for v in s.video_ids():
            grp = zarr.open_group(str(store), mode="r")[f"videos/{v}"]
            if "windows" in grp and "done" in grp["windows"]:
                out[v] = int(np.asarray(grp["windows"]["done"][:]).sum())
    except Exception:  # the store is being created by the child
        return {}
    return out


def _run(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "geo4d_cli", *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


@pytest.mark.slow
def test_sigkill_then_rerun_recomputes_nothing_finished(tmp_path):
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth
    from storage.store import Store

    src = tmp_path / "videos"
    src.mkdir()
    for i in range(3):
        r = render(make_scene(seed=30 + i, n_frames=40, height=96, width=128))
        write_video(src / f"v{i}.mp4", r.frames, fps=10)
        write_ground_truth(src / f"v{i}.gt", r.geometry)
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_LOGGING_LEVEL="CRITICAL")
    env.pop("PREFECT_API_URL", None)
    args = [str(src), "--store", "STORE", "--workers", "1", "--noise-depth", "0.05", "--no-evaluate"]

    killed_store = tmp_path / "killed.zarr"
    proc = _run(["archive", *[a if a != "STORE" else str(killed_store) for a in args]], env)
    deadline = time.time() + 240
    done_before: dict[str, int] = {}
    while time.time() < deadline and proc.poll() is None:
        done_before = _done_windows(killed_store)
        if sum(done_before.values()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stdout.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _done_windows(killed_store)
    total_per_video = 7  # 40 frames: starts 0, 4, …, 24
    assert 0 < sum(done_before.values()) < 3 * total_per_video, done_before
    s = Store(killed_store, mode="r")
    records_before = {v: s.stage_records(v) for v in s.video_ids()}

    rerun = _run(["archive", *[a if a != "STORE" else str(killed_store) for a in args]], env)
    out = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, out[-3000:]
    s = Store(killed_store, mode="r")
    assert len(s.video_ids()) == 3
    for v in s.video_ids():
        recs = s.stage_records(v)
        for stage, rec in records_before.get(v, {}).items():
            if rec.get("status") == "complete":
                assert recs[stage]["finished_at"] == rec["finished_at"], (v, stage)  # kept, not redone
        win = recs["windows"]
        redone = win["finished_at"] != records_before.get(v, {}).get("windows", {}).get("finished_at")
        predicted_again = win["predicted"] if redone else 0
        # No completed window was predicted again: the windows done before the kill plus those
        # predicted by the rerun make exactly one prediction per window.
        assert done_before.get(v, 0) + predicted_again == total_per_video, (v, done_before, win)

    clean_store = tmp_path / "clean.zarr"
    clean = _run(["archive", *[a if a != "STORE" else str(clean_store) for a in args]], env)
    out = clean.communicate(timeout=300)[0].decode()
    assert clean.returncode == 0, out[-3000:]
    c = Store(clean_store, mode="r")
    assert c.video_ids() == s.video_ids()
    for v in s.video_ids():
        a, b = s.read_fused(v), c.read_fused(v)
        for name in ("depth", "world_from_cam", "intrinsics"):
            assert np.allclose(getattr(a, name), getattr(b, name), atol=1e-5), (v, name)
