"""Reading a ``geo4d export`` dataset (docs/dataset.md) as training clips.

``root/index.parquet`` lists the videos (rows whose ``skipped`` is not null have no data and are
ignored); ``root/<zarr_path>`` (``videos/<id>.zarr``) holds ``rgb`` (T,H,W,3) uint8, ``depth``
(T,H,W) float32 (0 = invalid), ``intrinsics`` (T,3,3) and ``world_from_cam`` (T,4,4), chunked per
frame, so a clip reads only its own frames. :class:`ExportReader` is what
:class:`geo4d_model.train.data.ExportClips` is given as its ``read_clip`` (it pickles, for data-loader
workers).

Example:
    >>> reader = ExportReader("dataset")                      # doctest: +SKIP
    >>> reader.videos[0]["id"], reader(0, 0, 8)["rgb"].shape  # doctest: +SKIP
    ('v0', (8, 48, 64, 3))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import zarr

from geo4d.errors import InputError, StoreError

__all__ = ["CLIP_ARRAYS", "ExportReader", "export_videos", "read_export_clip"]

#: The arrays of an exported video that a training clip needs.
CLIP_ARRAYS = ("rgb", "depth", "intrinsics", "world_from_cam")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def export_videos(root: str | Path) -> list[dict]:
    """The exported videos of ``root``: ``id``, ``n_frames``, ``height``, ``width``, ``fps`` and
    ``zarr_path`` (relative to ``root``) per video, in index order; skipped rows left out.

    Raises :class:`InputError` (one line naming the path) when ``root`` is no export or lists none."""
    root = Path(root)
    index = root / "index.parquet"
    if not index.is_file():
        what = "no such directory" if not root.exists() else "not a geo4d export (no index.parquet)"
        raise InputError(f"{root}: {what}")
    try:
        rows = pq.read_table(index).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"{index}: unreadable Parquet index ({_first_line(exc)})") from None
    rows = [r for r in rows if r.get("skipped") is None and r.get("zarr_path")]
    if not rows:
        raise InputError(f"{root}: the export lists no exported video (empty, or every video skipped)")
    return [{"id": r["video_id"], "n_frames": int(r["n_frames"]), "height": int(r["height"]),
             "width": int(r["width"]), "fps": None if r.get("fps") is None else float(r["fps"]),
             "zarr_path": r["zarr_path"]} for r in rows]


def _read_clip(root: Path, video: dict, start: int, n_frames: int) -> dict[str, np.ndarray]:
    """Frames ``[start, start + n_frames)`` of one exported video (its :data:`CLIP_ARRAYS`)."""
    if start < 0 or n_frames < 1 or start + n_frames > video["n_frames"]:
        raise InputError(f"{video['id']}: frames {start}..{start + n_frames - 1} outside its "
                         f"{video['n_frames']} frames")
    path = root / video["zarr_path"]
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # missing or not a Zarr group
        raise StoreError(f"{path}: cannot open the exported video ({_first_line(exc)})") from None
    out = {}
    for name in CLIP_ARRAYS:
        if name not in group:
            raise StoreError(f"{path}: no array {name!r} (not a geo4d export video)")
        out[name] = np.asarray(group[name][start:start + n_frames])
    return out


def read_export_clip(root: str | Path, video_index: int, start: int, n_frames: int) -> dict[str, np.ndarray]:
    """Frames ``[start, start + n_frames)`` of the ``video_index``-th video of :func:`export_videos`:
    ``rgb`` (V,H,W,3) uint8, ``depth`` (V,H,W) (0 = invalid), ``intrinsics`` (V,3,3), ``world_from_cam``
    (V,4,4). Reads the index each call; :class:`ExportReader` reads it once."""
    return ExportReader(root)(video_index, start, n_frames)


class ExportReader:
    """An export's video list (read once) and a clip reader ``(video_index, start, n_frames) → dict``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.videos = export_videos(self.root)

    def __call__(self, video_index: int, start: int, n_frames: int) -> dict[str, np.ndarray]:
        if not 0 <= video_index < len(self.videos):
            raise InputError(f"{self.root}: no video {video_index} (the export has {len(self.videos)})")
        return _read_clip(self.root, self.videos[video_index], int(start), int(n_frames))
