"""One writer per video: a lease kept as a small JSON object beside the video data.

``STORE/leases/<video_id>.json`` holds the writer's owner token, host, pid, run id, when it took the
lease and its last heartbeat. A stage task takes the lease before it writes and a background thread
renews the heartbeat while it runs. Another writer finds the lease held and skips the video (an
archive) or waits (``geo4d reconstruct``; ``--no-wait`` exits 3). A lease is free again when its
holder releases it, when its heartbeat is older than :data:`LEASE_TTL_S` (a killed client, a lost
worker), or at once when its holder was a process of this host that no longer exists. A writer whose
lease was taken over sees it at its next heartbeat and stops writing (:meth:`VideoLease.check`).

On a local disk a free lease is taken atomically (hard link: create-if-absent). Object stores have
no atomic create-if-absent through fsspec, and taking over an expired lease replaces a record, so
there taking a lease is *write, wait :data:`SETTLE_S`, read back*: of two writers racing, the one
whose record is read back holds it.
Written by hand: no maintained library offers leases over fsspec.

Example:
    >>> with VideoLease("runs.zarr", "clip-0123456789", run_id="r1"):   # doctest: +SKIP
    ...     pass  # write the video's stages
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from geo4d.errors import LeaseHeldError, LeaseLostError
from storage.store import require_group

__all__ = ["VideoLease", "LeaseRecord", "LEASE_TTL_S", "HEARTBEAT_S", "SETTLE_S", "read_lease"]

#: A lease whose heartbeat is older than this is expired and may be taken over.
LEASE_TTL_S = 60.0
#: How often the holder renews its heartbeat.
HEARTBEAT_S = 10.0
#: Time between writing a lease and reading it back (the race window of two writers).
SETTLE_S = 0.2


@dataclass(frozen=True)
class LeaseRecord:
    owner: str
    host: str
    pid: int
    run_id: str | None
    acquired_at: float
    heartbeat_at: float

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.acquired_at))
        run = f", run {self.run_id}" if self.run_id else ""
        return f"{self.host} pid {self.pid}{run} since {since}"

    def expired(self, ttl: float, now: float | None = None) -> bool:
        """Heartbeat older than ``ttl``, or a holder on this host that is gone."""
        if (now or time.time()) - self.heartbeat_at > ttl:
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False


def _fs(location: str, storage_options: dict | None):
    import fsspec

    return fsspec.core.url_to_fs(str(location), **(storage_options or {}))


def _leases_group(location: str, storage_options: dict | None) -> None:
    """``leases/`` as a Zarr group of the store, so that Zarr sees a known member there (the lease
    records inside it are plain objects no Zarr reader lists)."""
    import zarr

    url = "://" in location
    root = zarr.open_group(location if url else location.removeprefix("file://"), mode="a", zarr_format=3,
                           storage_options=(storage_options or {}) if url else None)
    if "leases" not in root:
        require_group(root, "leases")


def read_lease(location: str, video_id: str, storage_options: dict | None = None) -> LeaseRecord | None:
    """The lease record of a video (None: not leased)."""
    fs, root = _fs(location, storage_options)
    path = f"{root.rstrip('/')}/leases/{video_id}.json"
    try:
        with fs.open(path, "rb") as f:
            return LeaseRecord(**json.loads(f.read()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # a half-written record (local writes are atomic; others may not be)
        return None


class VideoLease:
    """The lease of one video for this writer; a context manager (take, renew, release)."""

    def __init__(self, location: str, video_id: str, *, run_id: str | None = None,
                 storage_options: dict | None = None, ttl: float = LEASE_TTL_S, heartbeat: float = HEARTBEAT_S):
        self.location, self.video_id, self.run_id = str(location), video_id, run_id
        self.storage_options, self.ttl, self.heartbeat = storage_options, ttl, heartbeat
        self.owner = uuid.uuid4().hex
        _leases_group(self.location, storage_options)
        self._fs, root = _fs(self.location, storage_options)
        self._path = f"{root.rstrip('/')}/leases/{video_id}.json"
        self._local = type(self._fs).__name__ == "LocalFileSystem"
        self._acquired_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # --- the record ---------------------------------------------------------------------------------
    def _write(self) -> None:
        rec = LeaseRecord(self.owner, socket.gethostname(), os.getpid(), self.run_id, self._acquired_at, time.time())
        self._fs.makedirs(self._path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{self._path}.{self.owner}.tmp"
        with self._fs.open(tmp, "wb") as f:
            f.write(json.dumps(asdict(rec)).encode())
        self._fs.mv(tmp, self._path)  # a rename on local disks: readers never see half a record

    def _create_exclusive(self) -> bool:
        """Local disks: write the record under a temporary name and hard-link it into place, which fails
        when a record exists (create-if-absent, atomically); False when another writer was first."""
        self._acquired_at = time.time()
        rec = LeaseRecord(self.owner, socket.gethostname(), os.getpid(), self.run_id, self._acquired_at, time.time())
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{self._path}.{self.owner}.tmp")
        tmp.write_bytes(json.dumps(asdict(rec)).encode())
        try:
            os.link(tmp, self._path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def current(self) -> LeaseRecord | None:
        return read_lease(self.location, self.video_id, self.storage_options)

    # --- take, renew, release ----------------------------------------------------------------------
    def acquire(self, wait: float | None = 0.0, on_wait=None) -> VideoLease:
        """Take the lease; wait up to ``wait`` seconds (None: as long as it takes) for its holder.

        Raises:
            LeaseHeldError: still held after ``wait``, naming the holder and since when.
        """
        deadline = None if wait is None else time.monotonic() + wait
        told = False
        while True:
            held = self.current()
            if held is None and self._local and self._create_exclusive():
                self._start_heartbeat()  # atomic create-if-absent on a local disk: no race to settle
                return self
            if held is None or held.owner == self.owner or held.expired(self.ttl):
                self._acquired_at = time.time()
                self._write()
                time.sleep(SETTLE_S)
                now_held = self.current()
                if now_held is not None and now_held.owner == self.owner:
                    self._start_heartbeat()
                    return self
                held = now_held or held
            if held is None:
                continue  # released meanwhile: try again at once
            if deadline is not None and time.monotonic() >= deadline:
                raise LeaseHeldError(f"video {self.video_id}: being written by {held.describe()}")
            if on_wait and not told:
                on_wait(held)
                told = True
            time.sleep(min(1.0, self.ttl / 4))

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.video_id}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat):
            held = self.current()
            if held is None or held.owner != self.owner:
                self.lost = True  # taken over after our heartbeat stopped for too long
                return
            self._write()

    def check(self) -> None:
        """Raise :class:`LeaseLostError` when the lease was taken over (call before writing)."""
        if self.lost:
            raise LeaseLostError(f"video {self.video_id}: this writer's lease was taken over; it stops writing")

    def release(self) -> None:
        """Stop renewing and remove the record if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self.current()
        if held is not None and held.owner == self.owner:
            try:
                self._fs.rm(self._path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> VideoLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
