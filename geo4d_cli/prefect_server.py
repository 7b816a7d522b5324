"""The temporary Prefect API of a command-line run, started once and never left behind.

Without ``PREFECT_API_URL`` Prefect starts a local server (a uvicorn subprocess) on the first API call
and stops it at exit. Two things go wrong on a busy machine: its 20 s start timeout is exceeded, and a
CLI killed with SIGKILL leaves the server running for good (~220 MB). So the CLI starts it itself
with a longer timeout (:func:`start_temporary_server`) under a watchdog process
(``python -m geo4d_cli.prefect_server PARENT PORT``) that stops it as soon as the CLI is gone, however
the CLI ended. Prefect's own client then finds the running instance and uses it. Finding the server
reads ``/proc`` (Linux); elsewhere the watchdog does nothing and Prefect's own exit handler remains.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["prefect_env", "start_temporary_server", "STARTUP_TIMEOUT_S"]

#: Seconds the temporary server may take to start (Prefect's default, 20 s, is exceeded under load).
STARTUP_TIMEOUT_S = 120
_SERVER_MARK = b"prefect.server.api.server:create_app"


def prefect_env() -> None:
    """Local Prefect for command-line runs; a user's PREFECT_API_URL (a real server) is respected.

    Prefect's console logger is kept for critical messages only: a failing stage's traceback would
    bury the one-line error the CLI prints (runs are still fully recorded by the Prefect API).
    Progress is printed by the stages themselves (GEO4D_CONSOLE_PROGRESS). Without a configured server
    the temporary one is started here, with a longer start timeout and a watchdog that stops it when
    this process ends (:mod:`geo4d_cli.prefect_server`).
    """
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("GEO4D_CONSOLE_PROGRESS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(STARTUP_TIMEOUT_S))
    start_temporary_server()


def start_temporary_server() -> str | None:
    """Start the temporary Prefect API now (unless ``PREFECT_API_URL`` names a server), watched by a
    process that stops it when this process ends; returns its API URL (None: a configured server)."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide instance Prefect's client uses
    if server.port is None:
        server.port = server.find_available_port()  # known before the server exists: the watchdog's key
    # The watchdog starts first and knows the server by its port, so a kill at any moment after this
    # line leaves nothing behind, even if the watchdog itself starts late on a busy machine.
    subprocess.Popen([sys.executable, "-m", "geo4d_cli.prefect_server", str(os.getpid()), str(server.port)],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", STARTUP_TIMEOUT_S)))
    return server.api_url


def _servers_on(port: int) -> set[int]:
    """Processes serving Prefect's API on ``port`` (Linux /proc; empty elsewhere)."""
    mark = b"\x00--port\x00" + str(port).encode() + b"\x00"
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if _SERVER_MARK in cmd and mark in cmd:
            found.add(int(proc.name))
    return found


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` has ended, waiting at most ``timeout`` seconds for it."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):  # pragma: no cover - no pidfd: poll
        time.sleep(timeout)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _stop(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM ``pid``, then SIGKILL if it is still there after ``grace_s``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def watchdog(parent: int, port: int) -> None:
    """When the CLI process ``parent`` has ended (killed, crashed or finished), stop the Prefect server
    it started on ``port`` if that is still running."""
    while not _wait_for_exit(parent, timeout=3600.0):
        pass
    for pid in _servers_on(port):
        _stop(pid)


if __name__ == "__main__":  # python -m geo4d_cli.prefect_server PARENT_PID PORT
    watchdog(int(sys.argv[1]), int(sys.argv[2]))
