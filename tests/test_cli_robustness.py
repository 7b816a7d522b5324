"""The CLI under bad conditions: bad input reported before any Prefect machinery, operating-system
errors as one line with exit 2 and a consistent store, and no temporary Prefect server left behind
when the CLI is killed or its output pipe closes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_synthetic_videos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_synthetic_videos(tmp_path_factory.mktemp("robust"), [60, 61])[0]


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_LOGGING_LEVEL="CRITICAL")
    env.pop("PREFECT_API_URL", None)
    return env


_PROBE = ("import sys; from geo4d_cli import main; rc = main(sys.argv[1:]); "
          "print('PREFECT-IMPORTED' if 'prefect' in sys.modules else 'NO-PREFECT'); sys.exit(rc)")


@pytest.mark.parametrize("args, message", [
    (["reconstruct", "MISSING", "--store", "S"], "no such file"),
    (["reconstruct", "VIDEO", "--store", "S", "--fusion", "{bad"], "--fusion {bad: not valid JSON"),
    (["reconstruct", "VIDEO", "--store", "S", "--predictor", "geo4d", "--checkpoint", "nope.ckpt"],
     "--predictor geo4d needs --config, --pointmap-vae"),
    (["archive", "MISSING_DIR/", "--store", "S"], "no video found"),
    (["archive", "VIDEO", "--store", "S", "--gpus", "-1"], "--gpus -1: must be >= 0"),
])
def test_bad_input_is_reported_before_prefect_starts(args, message, video, tmp_path):
    subst = {"MISSING": str(tmp_path / "missing.mp4"), "VIDEO": str(video), "S": str(tmp_path / "s.zarr"),
             "MISSING_DIR/": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    args = [subst.get(a, a) for a in args]
    res = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert "NO-PREFECT" in res.stdout  # Prefect was not even imported, let alone a server started


def test_unreadable_video_is_one_line(video, tmp_path, monkeypatch, capsys):
    """Permission denied on the input video. Root reads every file, so as root the access check is
    made to answer as it would for a user without read access."""
    from geo4d_cli import main

    locked = tmp_path / "locked.mp4"
    locked.write_bytes(video.read_bytes())
    locked.chmod(0)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == locked else real(p, mode, **k))
    assert main(["reconstruct", str(locked), "--store", str(tmp_path / "s.zarr")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {locked}: permission denied"
    assert not (tmp_path / "s.zarr").exists()
    # in an archive the video fails alone, at decode, with the same line
    from pipeline import stages
    from storage.store import Store

    with pytest.raises(Exception, match="permission denied"):
        stages.decode_stage(Store(tmp_path / "a.zarr"), str(locked))


@pytest.fixture
def tmpfs(tmp_path):
    """An 8 MB tmpfs (needs root; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_and_read_only_store_are_one_line_and_keep_the_store(video, tmpfs, capsys, prefect_env):
    from geo4d_cli import main
    from storage.store import Store

    store = tmpfs / "s.zarr"
    base = ["--store", str(store), "--predictor", "synthetic", "--no-evaluate"]
    assert main(["reconstruct", str(video), *base]) == 0
    first = Store(store, mode="r").video_ids()
    capsys.readouterr()
    # fill the disk up to its last 300 kB: the second video's frames fit, its windows do not
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    (tmpfs / "filler").write_bytes(b"\0" * max(0, free - 300_000))
    big = video.parent / "v1.mp4"
    assert main(["reconstruct", str(big), *base]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {store}: no space left on device" or (
        err.startswith("error: ") and err.endswith("no space left on device") and "\n" not in err), err
    s = Store(store, mode="r")
    assert s.is_complete(first[0], "fuse") and s.read_fused(first[0]).depth.shape[0] == 20
    # read-only: one line, exit 2, the store still reads
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        assert main(["reconstruct", str(big), *base, "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "read-only file system" in err and "\n" not in err, err
        assert Store(store, mode="r").is_complete(first[0], "fuse")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)


def _servers(prefect_home: Path) -> list[int]:
    """Processes whose environment names this PREFECT_HOME and that serve Prefect's API."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"prefect.server.api.server:create_app" in cmd and f"PREFECT_HOME={prefect_home}".encode() in env:
            found.append(int(proc.name))
    return found


def _gone(prefect_home: Path, timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _servers(prefect_home):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_a_killed_cli_leaves_no_prefect_server(video, tmp_path):
    env = _env(tmp_path)
    home = Path(env["PREFECT_HOME"])
    proc = subprocess.Popen([sys.executable, "-m", "geo4d_cli", "reconstruct", str(video), "--store",
                             str(tmp_path / "s.zarr"), "--predictor", "synthetic", "--noise-depth", "0.05"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not _servers(home) and proc.poll() is None:
        time.sleep(0.1)
    assert _servers(home), "the temporary server never started"
    os.kill(proc.pid, signal.SIGKILL)  # the CLI alone, as a scheduler or an OOM killer would
    proc.wait()
    assert _gone(home), f"temporary Prefect server left running: {_servers(home)}"


@pytest.mark.slow
def test_a_closed_output_pipe_leaves_no_prefect_server(video, tmp_path):
    env = _env(tmp_path)
    home = Path(env["PREFECT_HOME"])
    cmd = (f"{sys.executable} -m geo4d_cli archive {video.parent} --store {tmp_path / 'a.zarr'} --workers 1 "
           f"--predictor synthetic --no-evaluate | head -1")
    res = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.stdout.count("\n") == 1
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert _gone(home), f"temporary Prefect server left running: {_servers(home)}"
