"""Resolve archive SOURCES (files, directories, globs, Parquet/CSV manifests) into video entries, and
plan an archive run: every video gets one id before anything is written (:func:`plan_archive`)."""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from geo4d.errors import InputError

__all__ = ["VideoSource", "RejectedSource", "resolve_sources", "plan_archive", "parse_intrinsics", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


@dataclass(frozen=True)
class VideoSource:
    path: str
    video_id: str | None = None  # None: the store's content-hash id
    also: tuple[str, ...] = ()   # further paths holding the same content (one video, decoded once)
    intrinsics: str | None = None  # known K as "fx,fy,cx,cy" in source pixels (manifest column), unchecked


def parse_intrinsics(text: str | list | tuple, what: str = "--intrinsics") -> list[float]:
    """``"fx,fy,cx,cy"`` (source pixels; a list works too) → 4 floats, fx, fy > 0; :class:`InputError`
    naming ``what`` otherwise.

    >>> parse_intrinsics("600, 600, 426.5, 239.5")
    [600.0, 600.0, 426.5, 239.5]
    """
    parts = text.replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        values = [float(v) for v in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(v == v and abs(v) != float("inf") for v in values) or min(values[:2]) <= 0:
        raise InputError(f"{what} {text!r}: expected fx,fy,cx,cy in source pixels (four numbers, fx and fy > 0)")
    return values


@dataclass(frozen=True)
class RejectedSource:
    """A source row that cannot become a video (e.g. an invalid id): it fails alone, nothing is written."""

    path: str
    video_id: str | None
    reason: str


def _manifest(path: Path) -> list[VideoSource]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    except Exception as exc:  # pyarrow raises several types for malformed files
        raise InputError(f"{path}: not a readable manifest ({exc})") from exc
    if "path" not in table.column_names:
        raise InputError(f"{path}: manifest has no 'path' column (columns: {table.column_names})")
    rows = table.to_pylist()
    out = []
    for row in rows:
        p = Path(str(row["path"]))
        if not p.is_absolute():
            p = path.parent / p
        vid, K = row.get("video_id"), row.get("intrinsics")
        out.append(VideoSource(str(p), str(vid) if vid not in (None, "") else None,
                               intrinsics=None if K in (None, "") else (K if isinstance(K, str) else ",".join(map(str, K)))))
    return out


def resolve_sources(sources: list[str]) -> list[VideoSource]:
    """Expand SOURCES in order, dropping duplicate paths.

    * a ``.parquet`` / ``.csv`` file: a manifest with a ``path`` column, an optional ``video_id`` and
      an optional ``intrinsics`` (known K as ``fx,fy,cx,cy`` in source pixels);
    * a directory: every video file below it (by suffix, sorted);
    * a pattern with ``*``, ``?`` or ``[``: the matching files;
    * any other path: taken as a video (a missing file fails later, for that video only).
    """
    out: list[VideoSource] = []
    for src in sources:
        p = Path(src)
        if p.suffix.lower() in (".parquet", ".csv") and p.is_file():
            out.extend(_manifest(p))
        elif p.is_dir():
            out.extend(VideoSource(str(q)) for q in sorted(p.rglob("*")) if q.is_file() and q.suffix.lower() in VIDEO_SUFFIXES)
        elif any(c in src for c in "*?["):
            matches = sorted(glob.glob(src, recursive=True))
            if not matches:
                raise InputError(f"{src}: pattern matches no file")
            out.extend(VideoSource(m) for m in matches if Path(m).is_file())
        else:
            out.append(VideoSource(str(p)))
    seen: set[str] = set()
    unique = []
    for s in out:
        key = str(Path(s.path).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(s)
    if not unique:
        raise InputError(f"sources {' '.join(sources)}: no video found")
    return unique


def _identify(src: VideoSource) -> tuple[str | None, str]:
    """(content hash or None for an unreadable path, the video id this source gets)."""
    from storage.store import content_hash, video_id_for

    p = Path(src.path)
    try:
        digest = content_hash(p) if p.is_file() else None
    except OSError:  # unreadable: fails at decode, for this video only
        digest = None
    if src.video_id:
        return digest, src.video_id
    if digest is None:
        return None, f"{p.stem or 'video'}-missing-{hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:8]}"
    return digest, video_id_for(p)


def _merge(first: VideoSource, other: VideoSource, first_id: str, other_id: str) -> VideoSource:
    if first.video_id and other.video_id and first_id != other_id:
        raise InputError(f"{first.path} and {other.path} are the same video with two ids, "
                         f"{first_id!r} and {other_id!r}: give one")
    return replace(first, also=first.also + (other.path,))


def plan_archive(sources: list[str]) -> tuple[list[VideoSource], list[RejectedSource]]:
    """Every video of SOURCES with its id, before anything is written.

    * The same content under several paths is one video (first path; the others in ``also``).
    * Two different videos with one id stop the run: :class:`InputError` naming both sources.
    * A row whose id is invalid is rejected alone (:class:`RejectedSource`), the others go on.
    """
    from storage.store import valid_video_id

    by_content: dict[str, int] = {}
    videos: list[VideoSource] = []
    ids: list[str] = []
    rejected: list[RejectedSource] = []
    for src in resolve_sources(sources):
        if src.video_id and not valid_video_id(src.video_id):
            rejected.append(RejectedSource(src.path, src.video_id, f"video_id {src.video_id!r}: not a valid id "
                                           "(letters, digits, '.', '_', '-'; at most 128; starting with a letter or digit)"))
            continue
        if src.intrinsics is not None:
            try:
                parse_intrinsics(src.intrinsics, "intrinsics")
            except InputError as exc:
                rejected.append(RejectedSource(src.path, src.video_id, str(exc)))
                continue
        digest, vid = _identify(src)
        if digest is not None and digest in by_content:
            k = by_content[digest]
            videos[k] = _merge(videos[k], src, ids[k], vid)
            continue
        if vid in ids:
            raise InputError(f"video_id {vid!r} names two different videos: {videos[ids.index(vid)].path} and {src.path}")
        if digest is not None:
            by_content[digest] = len(videos)
        videos.append(replace(src, video_id=vid))
        ids.append(vid)
    return videos, rejected
