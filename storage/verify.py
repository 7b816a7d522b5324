"""Verifying a store: every chunk of every finished stage is present, decodable and checksummed.

For each video and each finished stage (record ``complete``, or ``damaged`` from an earlier
verification) every chunk of the stage's arrays (:data:`STAGE_ARRAYS`) is listed and read:

* **missing** — absent from storage. Format-2 arrays store every chunk (fill-value ones included),
  so an absent chunk is lost data; format-1 arrays skipped fill-value chunks, so there an absent
  chunk is either lost data or a chunk that held nothing but the fill value (zeros): it is counted
  as damage as well, since it would be read back as zeros;
* **checksum mismatch** — the chunk's crc32c (format 2) does not match its bytes;
* **undecodable** — the codecs fail (truncated or garbled data; format 1 has no checksum, so this
  and presence are all that can be checked there).

The windows stage is also checked against its per-window ``done`` markers: a finished stage has
every window marked done, and a window whose data chunks are damaged is damaged whatever its
marker says. :func:`record_damage` writes the findings into the store (stage status ``damaged``,
see docs/store.md) and clears the markers of damaged windows, so that a rerun recomputes exactly
the damaged stages — and of a damaged windows stage only its damaged windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from geo4d.errors import StoreError
from geo4d.predictor import MODALITIES
from storage.store import (FUSED_ARRAYS, Store, chunk_coords, every_chunk_written, has_checksums,
                           stored_chunk_keys)

__all__ = ["STAGE_ARRAYS", "ArrayCheck", "VideoCheck", "check_video", "record_damage", "verify_store"]

#: The arrays (paths under ``videos/<id>``) each stage writes; ``evaluate`` writes none.
STAGE_ARRAYS: dict[str, tuple[str, ...]] = {
    "decode": ("frames",),
    "windows": tuple(f"windows/{m}" for m in MODALITIES) + ("windows/done",),
    "fuse": tuple(f"fused/{n}" for n in FUSED_ARRAYS),
}
#: Arrays a stage writes that older stores lack: checked when present.
OPTIONAL_STAGE_ARRAYS: dict[str, tuple[str, ...]] = {"fuse": ("fused/depth_source", "fused/shot")}
#: Stage statuses whose data is supposed to be whole.
_FINISHED = ("complete", "damaged")


@dataclass
class ArrayCheck:
    """What one array of a finished stage holds: ``bad`` maps a chunk's index (its position in the
    chunk grid, row-major: the frame or window for this program's arrays) to its problem."""

    video_id: str
    stage: str
    array: str
    total: int
    bad: dict[int, str] = field(default_factory=dict)
    checksums: bool = True
    every_chunk: bool = True
    error: str | None = None  # the array itself is missing or unreadable (all its chunks count as bad)
    first_axis_per_chunk: int = 1

    @property
    def n_bad(self) -> int:
        return self.total if self.error else len(self.bad)

    @property
    def damaged(self) -> bool:
        return bool(self.error or self.bad)

    def problem(self) -> str:
        """One line: the array's problem, or its first bad chunk's and how many more."""
        if self.error:
            return self.error
        if not self.bad:
            return ""
        first = min(self.bad)
        more = f" (+{len(self.bad) - 1} more)" if len(self.bad) > 1 else ""
        return f"chunk {first}: {self.bad[first]}{more}"


@dataclass
class VideoCheck:
    """The checks of one video's finished stages, and the windows found damaged."""

    video_id: str
    arrays: list[ArrayCheck]
    checked: list[str]
    bad_windows: list[int] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return any(a.damaged for a in self.arrays)

    def damage(self) -> dict[str, dict[str, dict]]:
        """``{stage: {array: {"chunks": [bad chunk indices] or "all", "problem": str}}}`` of the damaged arrays."""
        out: dict[str, dict[str, dict]] = {}
        for a in self.arrays:
            if a.damaged:
                chunks: list[int] | str = "all" if a.error else sorted(a.bad)
                out.setdefault(a.stage, {})[a.array] = {"chunks": chunks, "problem": a.problem()}
        return out

    def summary(self) -> str:
        """One line naming the damaged arrays (``fused/depth chunk 3: missing; …``)."""
        return "; ".join(f"{a.array} {a.problem()}" for a in self.arrays if a.damaged)


def _chunk_problem(arr, coords: tuple[int, ...]) -> str | None:
    """None when the chunk decodes (and its checksum matches), else what is wrong with it."""
    try:
        arr.blocks[coords]
    except OSError:
        raise  # storage unreachable: not a finding about the data
    except Exception as exc:  # codec errors name neither a common type nor the chunk
        text = str(exc).strip().splitlines()
        if "checksum" in str(exc).lower():
            return "checksum mismatch"
        return f"undecodable ({type(exc).__name__}{': ' + text[0][:120] if text else ''})"
    return None


def check_array(store: Store, video_id: str, stage: str, path: str) -> ArrayCheck:
    """Read every chunk of ``videos/<video_id>/<path>``: presence, decoding, checksum."""
    try:
        arr = store.video_array(video_id, path)
        coords = chunk_coords(arr)
        have = stored_chunk_keys(arr)
    except StoreError as exc:
        return ArrayCheck(video_id, stage, path, 1, error=f"array missing ({str(exc).split(': ')[-1]})")
    except (KeyError, ValueError) as exc:  # metadata present but not readable
        return ArrayCheck(video_id, stage, path, 1, error=f"array unreadable ({exc})")
    check = ArrayCheck(video_id, stage, path, len(coords), checksums=has_checksums(arr),
                       every_chunk=every_chunk_written(arr), first_axis_per_chunk=int(arr.chunks[0]))
    for index, c in enumerate(coords):
        if arr.metadata.encode_chunk_key(c) not in have:
            check.bad[index] = "missing"
        else:
            problem = _chunk_problem(arr, c)
            if problem:
                check.bad[index] = problem
    return check


def _windows_of(check: ArrayCheck, n_windows: int) -> set[int]:
    """Windows covered by the bad chunks of a windows array (all of them for a missing array)."""
    if check.error:
        return set(range(n_windows))
    step = check.first_axis_per_chunk
    return {g for i in check.bad for g in range(i * step, min((i + 1) * step, n_windows))}


def _check_done_markers(store: Store, video_id: str, checks: list[ArrayCheck]) -> list[int]:
    """Windows of a finished windows stage that are damaged: bad data chunks or a marker ≠ 1.

    Windows whose marker is not 1 are added to the ``windows/done`` check as bad chunks."""
    done_check = next(c for c in checks if c.array == "windows/done")
    try:
        done = np.asarray(store.video_array(video_id, "windows/done")[:])
    except Exception:  # a damaged marker chunk was reported above; read what decodes
        done = None
    n_windows = done.shape[0] if done is not None else max(c.total * c.first_axis_per_chunk for c in checks)
    bad = set().union(*(_windows_of(c, n_windows) for c in checks))
    if done is not None:
        for g in np.flatnonzero(done != 1).tolist():
            done_check.bad.setdefault(g, "window not marked done in a finished stage")
            bad.add(g)
    return sorted(bad)


def _stage_paths(store: Store, video_id: str, stage: str) -> list[str]:
    """The arrays to check of a finished stage: its arrays, and its optional ones that exist."""
    optional = []
    for path in OPTIONAL_STAGE_ARRAYS.get(stage, ()):
        try:
            store.video_array(video_id, path)
        except StoreError:
            continue
        optional.append(path)
    return list(STAGE_ARRAYS[stage]) + optional


def check_video(store: Store, video_id: str, stages: Iterable[str] | None = None) -> VideoCheck:
    """Check the finished stages of one video (only ``stages`` when given); writes nothing."""
    records = store.stage_records(video_id)
    wanted = [st for st in STAGE_ARRAYS if (stages is None or st in stages)
              and (records.get(st) or {}).get("status") in _FINISHED]
    result = VideoCheck(video_id, [], wanted)
    for st in wanted:
        checks = [check_array(store, video_id, st, path) for path in _stage_paths(store, video_id, st)]
        if st == "windows":
            result.bad_windows = _check_done_markers(store, video_id, checks)
        result.arrays.extend(checks)
    return result


def record_damage(store: Store, check: VideoCheck) -> None:
    """Write a video's findings: damaged stages get status ``damaged`` (intact ones found damaged
    before become ``complete``), and the ``done`` markers of damaged windows are cleared."""
    store.mark_damaged(check.video_id, check.damage(), check.checked)
    if check.bad_windows and "windows" in check.damage():
        store.clear_window_marks(check.video_id, check.bad_windows)


def verify_store(store: Store, video_ids: list[str] | None = None, record: bool = True,
                 progress: Callable[[VideoCheck], None] | None = None) -> list[VideoCheck]:
    """Check every video (or ``video_ids``); with ``record`` write the findings into the store.

    Recording rewrites a video's attributes, so run it while no other process writes that video.
    """
    have = store.video_ids()
    unknown = [v for v in video_ids or [] if v not in have]
    if unknown:
        raise StoreError(f"{store.location}: no video {unknown[0]!r} (have: {', '.join(have) or 'none'})")
    out = []
    for vid in video_ids or have:
        check = check_video(store, vid)
        if record:
            record_damage(store, check)
        if progress:
            progress(check)
        out.append(check)
    return out
