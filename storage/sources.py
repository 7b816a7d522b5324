"""Resolve archive SOURCES (files, directories, globs, Parquet/CSV manifests) into video entries."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from geo4d.errors import InputError

__all__ = ["VideoSource", "resolve_sources", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


@dataclass(frozen=True)
class VideoSource:
    path: str
    video_id: str | None = None  # None: the store's content-hash id


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
        vid = row.get("video_id")
        out.append(VideoSource(str(p), str(vid) if vid not in (None, "") else None))
    return out


def resolve_sources(sources: list[str]) -> list[VideoSource]:
    """Expand SOURCES in order, dropping duplicate paths.

    * a ``.parquet`` / ``.csv`` file: a manifest with a ``path`` column and an optional ``video_id``;
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
