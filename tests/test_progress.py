"""Progress on the console: counters with rate and ETA, a heartbeat within 10 s of silence, each line
once; and what a user sees from ``geo4d reconstruct`` and ``geo4d archive`` through a pipe."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_synthetic_videos

from tasks.progress import ConsoleProgress

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _plain(every_s=5.0, heartbeat_s=10.0):
    out, clock = io.StringIO(), Clock()
    return out, clock, ConsoleProgress(out, tty=False, clock=clock, every_s=every_s, heartbeat_s=heartbeat_s)


def test_plain_lines_first_throttled_last_with_rate_and_eta():
    out, clock, c = _plain()
    c.update("windows", 0, 10, "preparing")
    for k in range(1, 11):
        clock.t += 2.0  # a window every 2 s: at most one line per 5 s in between
        c.update("windows", k, 10, f"window {k - 1}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "  windows 0/10 preparing"
    assert lines[-1] == "  windows 10/10 2.0 s each, 20 s: window 9"
    middle = lines[1:-1]
    assert 2 <= len(middle) <= 4  # 18 s of steps at ≥ 5 s apart
    assert "windows 3/10 2.0 s each, ETA 14 s: window 2" in middle[0]


def test_fast_steps_show_a_rate_per_second():
    out, clock, c = _plain()
    c.update("fuse", 0, 100)
    clock.t += 4.0
    c.update("fuse", 100, 100, "done")
    assert out.getvalue().splitlines()[-1] == "  fuse 100/100 25.0/s, 4 s: done"


def test_identical_lines_are_not_repeated():
    out, clock, c = _plain(every_s=0.0)
    for _ in range(3):
        c.update("decode", 16, 64, "decoding")
    c.line("a")
    c.line("b")
    assert out.getvalue().splitlines() == ["  decode 16/64 decoding", "a", "b"]


def test_heartbeat_after_ten_seconds_of_silence_only():
    out, clock, c = _plain()
    c.update("windows", 0, 4, "loading the network")
    clock.t += 9.9
    assert not c.tick() and out.getvalue().count("\n") == 1
    clock.t += 0.2
    assert c.tick()
    beat = out.getvalue().splitlines()[-1]
    assert beat.startswith("  windows 0/4") and "working, 10 s since the last step" in beat
    clock.t += 5.0
    assert not c.tick()  # the heartbeat itself counts as output
    clock.t += 5.0
    assert c.tick()
    assert "working, 20 s since the last step" in out.getvalue().splitlines()[-1]


def test_heartbeat_between_stages_names_the_last_line():
    out, clock, c = _plain()
    c.line("  decode: done in 1.0 s")
    clock.t += 12.0
    assert c.tick()
    assert out.getvalue().splitlines()[-1] == "  working (12 s since: decode: done in 1.0 s)"


def test_a_closed_console_is_silent():
    out, clock, c = _plain()
    c.update("fuse", 0, 3)
    c.close()
    clock.t += 60.0
    assert not c.tick()


def test_terminal_redraws_one_line_per_stage():
    out, clock = io.StringIO(), Clock()
    c = ConsoleProgress(out, tty=True, clock=clock)
    for k in range(4):
        clock.t += 1.0
        c.update("windows", k, 3, f"window {k}")
    c.line("  windows: done in 3.0 s")
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 4  # every step redrawn in place …
    assert text.count("\n") == 2  # … one line for the stage, one for the next message
    assert text.split("\n")[0].endswith("windows 3/3 1.0 s each, 3 s: window 3")


def test_progress_logger_routes_to_the_console_unless_told_not(monkeypatch):
    import tasks.progress as progress
    from tasks.common import progress_logger

    out, clock, screen = _plain(every_s=0.0)
    monkeypatch.setattr(progress, "console", lambda: screen)

    class Log:
        lines = []

        def info(self, fmt, *a):
            self.lines.append(fmt % a)

    log = Log()
    progress_logger(log, stage="windows")(1, 2, "window 0")
    progress_logger(log, stage="windows", console=False)(2, 2, "window 1")
    assert out.getvalue() == "  windows 1/2 window 0\n"
    assert log.lines == ["windows 1/2 window 0", "windows 2/2 window 1"]


# -- what a user sees through a pipe -----------------------------------------------------------------

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    write_synthetic_videos(d, [80, 81, 82], name="p{i}")
    return d


def _geo4d(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"))
    for name in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "GEO4D_CONSOLE_PROGRESS"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "geo4d_cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)


def _no_repeats(lines: list[str]) -> None:
    progress = [ln for ln in lines if ln.strip()]
    assert len(progress) == len(set(progress)), "a line was printed twice:\n" + "\n".join(progress)


def test_reconstruct_shows_every_stage_through_a_pipe(videos, tmp_path):
    res = _geo4d(["reconstruct", str(videos / "p0.mp4"), "--store", str(tmp_path / "s.zarr"), "--no-report"],
                 tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "\r" not in res.stdout  # not a terminal: plain lines
    for stage in ("decode", "windows", "fuse"):
        assert any(ln.startswith(f"  {stage} ") and "/" in ln for ln in lines), (stage, res.stdout)
        assert f"  {stage}: done in" in res.stdout, (stage, res.stdout)
    assert "  evaluate: done in" in res.stdout
    windows = [ln for ln in lines if ln.startswith("  windows ") and "/" in ln]
    assert windows[-1].startswith("  windows 2/2 ") and ("each" in windows[-1] or "/s" in windows[-1])
    _no_repeats(lines)


def test_archive_prints_each_video_as_it_finishes(videos, tmp_path):
    res = _geo4d(["archive", str(videos), "--store", str(tmp_path / "a.zarr"), "--workers", "0", "--no-report"],
                 tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for k in (1, 2, 3):
        assert sum(ln.startswith(f"[{k}/3] ") and ln.endswith(": ok") for ln in lines) == 1, res.stdout
    assert any(ln.startswith("3 video(s), 0 rejected") for ln in lines), res.stdout
    assert lines[[ln.startswith("  videos 3/3") for ln in lines].index(True)].endswith(
        "3 ok, 0 failed, 6 windows sampled")
    _no_repeats(lines)
