"""Progress on the console of a ``geo4d`` command: stage counters with rate and ETA, and a heartbeat.

The stages report ``progress(done, total, message)`` (:data:`pipeline.stages.Progress`); the
Prefect tasks route those calls here through :func:`tasks.common.progress_logger`. The flows' own
``print`` goes to Prefect's run logger (``log_prints``), which command-line runs keep quiet, so this
module writes to the console stream directly.

- On a terminal one status line per stage is redrawn in place and closed when the stage ends.
- Elsewhere (a pipe, a log file, CI) plain lines: a stage's first, then at most one every
  ``every_s`` seconds, and its last.
- Either way, after ``heartbeat_s`` seconds without output while the console is open the current
  state is printed again with the time since the last step, so a long network load or a slow
  window is never silent for longer; a line identical to the one before is not printed twice.

Enabled where ``GEO4D_CONSOLE_PROGRESS=1`` (the ``geo4d`` command sets it); elsewhere
:func:`console` is None and progress goes to the run logger only.

Example (a fake clock, plain output):

>>> import io
>>> out, now = io.StringIO(), [0.0]
>>> c = ConsoleProgress(out, tty=False, clock=lambda: now[0])
>>> c.update("windows", 0, 4, "loading the network")
>>> now[0] = 8.0; c.update("windows", 2, 4, "window 1")
>>> now[0] = 12.0; c.update("windows", 4, 4, "window 3")
>>> print(out.getvalue(), end="")
  windows 0/4 loading the network
  windows 2/4 4.0 s each, ETA 8 s: window 1
  windows 4/4 3.0 s each, 12 s: window 3
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

#: Environment switch of console progress (set by the ``geo4d`` command line).
CONSOLE_ENV = "GEO4D_CONSOLE_PROGRESS"


@dataclass
class _Stage:
    name: str
    total: int
    t0: float  # when its first update arrived
    done0: int  # done at that time (a resumed stage starts above 0)
    done: int = 0
    message: str = ""
    t_step: float = 0.0  # when ``done`` last changed

    def rate_text(self, now: float) -> str:
        """``2.5/s`` or ``4.0 s each``, with the ETA (or the elapsed time once done); '' before a step."""
        steps, dt = self.done - self.done0, now - self.t0
        if steps <= 0 or dt <= 0:
            return ""
        per = dt / steps
        rate = f"{1 / per:.1f}/s" if per < 1 else f"{per:.1f} s each"
        if self.done >= self.total:
            return f"{rate}, {_duration(dt)}"
        return f"{rate}, ETA {_duration(per * (self.total - self.done))}"


class ConsoleProgress:
    """One process's progress console (thread-safe; see the module docstring for what it prints)."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, every_s: float = 5.0, heartbeat_s: float = 10.0):
        self.stream = stream if stream is not None else sys.stdout
        self.tty = _isatty(self.stream) if tty is None else tty
        self.clock, self.every_s, self.heartbeat_s = clock, every_s, heartbeat_s
        self._lock = threading.RLock()
        self._stage: _Stage | None = None
        self._open_line = False  # a terminal status line is drawn and not yet closed
        self._last_text = ""
        self._last_out = clock()
        self._closed = False

    # -- what the stages and flows call -------------------------------------------------------
    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        """Stage ``stage`` is at ``done`` of ``total`` (``message``: what it is doing now)."""
        with self._lock:
            now = self.clock()
            s = self._stage
            if s is None or s.name != stage or s.total != total or done < s.done:
                self._close_line()
                s = self._stage = _Stage(stage, total, now, done, done, message, now)
                self._emit(self._status(s, now), now)
                return
            if done != s.done:
                s.t_step = now
            s.done, s.message = done, message
            finished = total and done >= total
            due = self.tty or finished or now - self._last_out >= self.every_s
            if due:
                self._emit(self._status(s, now), now)
            if finished:
                self._close_line()
                self._stage = None

    def line(self, text: str) -> None:
        """A line of its own (an archive's ``[k/N] id: ok``), after any open status line."""
        with self._lock:
            self._close_line()
            self._write(text + "\n")
            self._last_text, self._last_out = text, self.clock()

    def tick(self) -> bool:
        """The heartbeat: after ``heartbeat_s`` of silence, say again where things stand. True if it spoke."""
        with self._lock:
            now = self.clock()
            if self._closed or now - self._last_out < self.heartbeat_s:
                return False
            s = self._stage
            if s is not None:
                text = f"{self._status(s, now)} (working, {_duration(now - s.t_step)} since the last step)"
            else:
                text = f"  working ({_duration(now - self._last_out)} since: {self._last_text.strip() or 'start'})"
            if self.tty:  # redrawn in place: the terminal shows it is alive without scrolling
                self._write("\r\x1b[K" + text)
                self._open_line = True
            else:
                self._write(text + "\n")
            self._last_out = now  # the remembered line stays the last real one
            return True

    def close(self) -> None:
        """Close any open status line and stop the heartbeat."""
        with self._lock:
            self._close_line()
            self._closed = True

    # -- internals ----------------------------------------------------------------------------
    def _status(self, s: _Stage, now: float) -> str:
        rate = s.rate_text(now)
        text = f"  {s.name} {s.done}/{s.total}" + (f" {rate}" if rate else "")
        return text + (f": {s.message}" if rate and s.message else f" {s.message}" if s.message else "")

    def _emit(self, text: str, now: float) -> None:
        if text == self._last_text:
            return
        if self.tty:
            self._write("\r\x1b[K" + text)
            self._open_line = True
        else:
            self._write(text + "\n")
        self._last_text, self._last_out = text, now

    def _close_line(self) -> None:
        if self._open_line:
            self._write("\n")
            self._open_line = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # the reader is gone (`| head`) or the stream closed
            self._closed = True
            os.environ[CONSOLE_ENV] = "0"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_CONSOLE: ConsoleProgress | None = None
_CONSOLE_LOCK = threading.Lock()


def console() -> ConsoleProgress | None:
    """This process's console (created on first use, with its heartbeat thread) when enabled, else None."""
    global _CONSOLE
    if os.environ.get(CONSOLE_ENV) != "1":
        return None
    with _CONSOLE_LOCK:
        if _CONSOLE is None or _CONSOLE._closed:
            _CONSOLE = ConsoleProgress()
            threading.Thread(target=_heartbeat, args=(_CONSOLE,), name="geo4d-heartbeat", daemon=True).start()
        return _CONSOLE


def close_console() -> None:
    """Close this process's console, if open (the command is done)."""
    global _CONSOLE
    with _CONSOLE_LOCK:
        if _CONSOLE is not None:
            _CONSOLE.close()
            _CONSOLE = None


def say(text: str) -> None:
    """A line on the console when enabled (nothing otherwise)."""
    c = console()
    if c is not None:
        c.line(text)


def announce(text: str) -> None:
    """A flow's line: on the console when enabled, else ``print`` (a ``log_prints`` flow logs it) — once."""
    c = console()
    if c is not None:
        c.line(text)
    else:
        print(text)


def advance(stage: str, done: int, total: int, message: str = "") -> None:
    """A counter on the console when enabled (an archive's videos done of all)."""
    c = console()
    if c is not None:
        c.update(stage, done, total, message)


def _heartbeat(c: ConsoleProgress, period_s: float = 1.0) -> None:
    while not c._closed:
        time.sleep(period_s)
        c.tick()


def train_progress(step: int, record: dict) -> None:
    """A training log record (``geo4d train``: with ``total_steps``, ``phase``, ``loss``) as the console's
    ``train`` counter."""
    total = int(record.get("total_steps") or 0)
    if total:
        advance("train", step, total, f"{record.get('phase', '')} loss {float(record.get('loss', 0.0)):.4g}")
