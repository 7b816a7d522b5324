"""One writer per video: leases taken, renewed, expired, taken over, lost; concurrent reconstructions
of one video do the work once; a leased video is skipped by an archive and refused by --no-wait."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_synthetic_videos

from geo4d.errors import LeaseHeldError, LeaseLostError
from storage.leases import VideoLease, read_lease
from storage.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    return str(Store(tmp_path / "s.zarr").location)


def test_a_held_lease_names_its_holder_and_is_released(store):
    first = VideoLease(store, "clip-1", run_id="run-a").acquire()
    rec = read_lease(store, "clip-1")
    assert rec.owner == first.owner and rec.pid == os.getpid() and rec.run_id == "run-a"
    with pytest.raises(LeaseHeldError, match=rf"video clip-1: being written by .* pid {os.getpid()}, run run-a since 20"):
        VideoLease(store, "clip-1").acquire(wait=0.5)
    VideoLease(store, "clip-2").acquire().release()  # other videos are free
    first.release()
    assert read_lease(store, "clip-1") is None
    with VideoLease(store, "clip-1") as again:
        assert read_lease(store, "clip-1").owner == again.owner


def test_a_stale_heartbeat_expires_and_the_old_holder_stops_writing(store):
    old = VideoLease(store, "clip-1", ttl=0.6, heartbeat=0.2).acquire()
    old._stop.set()  # its heartbeat stops (a frozen or cut-off writer)
    time.sleep(0.9)
    new = VideoLease(store, "clip-1", ttl=0.6, heartbeat=0.2).acquire(wait=0)  # taken over
    old._start_heartbeat()  # the old writer wakes up: its next heartbeat finds another owner
    time.sleep(0.5)
    assert old.lost
    with pytest.raises(LeaseLostError, match="lease was taken over; it stops writing"):
        old.check()
    old.release()  # does not remove the new holder's record
    assert read_lease(store, "clip-1").owner == new.owner
    new.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(store):
    proc = subprocess.run([sys.executable, "-c", "import sys; from storage.leases import VideoLease; "
                           f"VideoLease({store!r}, 'clip-1').acquire(); sys.stdout.flush(); import os; os._exit(0)"],
                          cwd=ROOT, check=True)
    assert proc.returncode == 0 and read_lease(store, "clip-1") is not None  # left behind by a dead process
    lease = VideoLease(store, "clip-1").acquire(wait=0)  # no waiting out the TTL
    lease.release()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("leased")
    write_synthetic_videos(d, [80, 81], n_frames=40, height=64, width=96)
    return d


def test_no_wait_exits_3_and_an_archive_skips_a_leased_video(videos, tmp_path, capsys, prefect_env):
    import json

    from geo4d_cli import main
    from storage.store import video_id_for

    store = str(tmp_path / "s.zarr")
    Store(store)
    vid = video_id_for(videos / "v0.mp4")
    held = VideoLease(store, vid, run_id="other-run").acquire()
    try:
        rc = main(["reconstruct", str(videos / "v0.mp4"), "--store", store, "--predictor", "synthetic", "--no-wait"])
        assert rc == 3
        assert f"error: video {vid}: being written by" in capsys.readouterr().err
        rc = main(["archive", str(videos), "--store", store, "--workers", "0", "--predictor", "synthetic",
                   "--no-evaluate", "--summary-json", str(tmp_path / "sum.json")])
        assert rc == 1
        summary = json.loads((tmp_path / "sum.json").read_text())
        by_id = {v["video_id"]: v for v in summary["videos"]}
        assert by_id[vid]["status"] == "failed" and "run other-run" in by_id[vid]["error"]
        assert summary["complete"] == 1
        assert not Store(store, mode="r").has_video(vid)  # nothing written for the leased video
    finally:
        held.release()


@pytest.mark.slow
def test_two_concurrent_reconstructions_of_one_video_do_the_work_once(videos, tmp_path):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_LOGGING_LEVEL="CRITICAL")
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "geo4d_cli", "reconstruct", str(videos / "v1.mp4"), "--store", str(tmp_path / "s.zarr"),
           "--predictor", "synthetic", "--noise-depth", "0.05", "--no-evaluate"]
    Store(tmp_path / "s.zarr")
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    s = Store(tmp_path / "s.zarr", mode="r")
    (vid,) = s.video_ids()
    assert s.stage_record(vid, "windows")["predicted"] == 7  # 40 frames: every window predicted once
    for stage in ("decode", "windows", "fuse"):
        done = [out for out in outs if f"{stage:<9} skipped (already complete)" not in out]
        assert len(done) == 1, (stage, outs)  # one run did it, the other found it done


def test_writers_starting_at_once_on_a_fresh_store_all_get_their_video(tmp_path):
    """The first leases of several videos taken at the same moment (an archive's first decodes on a
    thread pool) all succeed: the ``leases`` group they all create is created once, by whichever wins
    (Zarr's require_group alone lets the losers fail with ContainsGroupError)."""
    import threading

    for trial in range(12):
        location = str(Store(tmp_path / f"fresh{trial}.zarr").location)
        start, errors, taken = threading.Barrier(6), [], []

        def take(k: int) -> None:
            start.wait()
            try:
                with VideoLease(location, f"clip-{k}"):
                    taken.append(k)
            except Exception as exc:  # noqa: BLE001 — collected and asserted below
                errors.append(repr(exc))

        threads = [threading.Thread(target=take, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and sorted(taken) == list(range(6)), f"trial {trial}: {errors}"


def test_require_group_opens_the_group_a_racing_writer_created(tmp_path, monkeypatch):
    """Deterministic form of the race: the group appears between Zarr's check and its create."""
    import zarr
    from zarr.errors import ContainsGroupError

    from storage.store import require_group

    root = zarr.open_group(str(tmp_path / "r.zarr"), mode="a", zarr_format=3)
    original = zarr.Group.require_group

    def lose_the_race(self, name, **kw):
        original(self, name, **kw)  # the other writer creates it ...
        raise ContainsGroupError(f"A group exists at path {name!r}")  # ... and this one's create fails

    monkeypatch.setattr(zarr.Group, "require_group", lose_the_race)
    grp = require_group(root, "leases")
    assert isinstance(grp, zarr.Group) and grp.path == "leases"
