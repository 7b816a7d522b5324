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

__all__ = ["CLIP_ARRAYS", "ExportReader", "ShardReader", "export_videos", "read_export_clip"]

#: The arrays of an exported video that a training clip needs.
CLIP_ARRAYS = ("rgb", "depth", "intrinsics", "world_from_cam")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def export_videos(root: str | Path, split: str | None = None) -> list[dict]:
    """The exported videos of ``root``: ``id``, ``n_frames``, ``height``, ``width``, ``fps`` and
    ``zarr_path`` (relative to ``root``) per video (per shot for multi-shot videos), in index order;
    skipped rows left out. ``split`` keeps the rows of that split (the index's ``split`` column, see
    docs/curation.md; an index without one has no splits); None or ``"all"``: every row.

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
    rows = _in_split(root, rows, split)
    return [{"id": r["video_id"], "n_frames": int(r["n_frames"]), "height": int(r["height"]),
             "width": int(r["width"]), "fps": None if r.get("fps") is None else float(r["fps"]),
             "zarr_path": r["zarr_path"]} for r in rows]


def _in_split(root: Path, rows: list[dict], split: str | None) -> list[dict]:
    """The rows of ``split`` (all of them for None/"all", or when the index has no split column)."""
    if split in (None, "all") or not any("split" in r for r in rows):
        return rows
    kept = [r for r in rows if r.get("split") == split]
    if not kept:
        names = ", ".join(sorted({str(r.get("split")) for r in rows}))
        raise InputError(f"{root}: no exported shot in split {split!r} (the export's splits: {names})")
    return kept


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

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root)
        self.videos = export_videos(self.root, split)

    def __call__(self, video_index: int, start: int, n_frames: int) -> dict[str, np.ndarray]:
        if not 0 <= video_index < len(self.videos):
            raise InputError(f"{self.root}: no video {video_index} (the export has {len(self.videos)})")
        return _read_clip(self.root, self.videos[video_index], int(start), int(n_frames))


# --- webdataset shards (`geo4d export --format webdataset`, storage/shards.py) -----------------------
#: Members of a shard sample that a training clip needs, and the clip dict names they are read as.
_SHARD_MEMBERS = {"frames.npy": "rgb", "depth.npy": "depth", "intrinsics.npy": "intrinsics",
                  "world_from_cam.npy": "world_from_cam"}


def _index_shard(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """``{key: {member suffix: (data offset, size)}}`` of one tar shard, from its headers only."""
    import tarfile

    out: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.isfile() and "." in m.name:
                    key, suffix = m.name.split(".", 1)
                    out.setdefault(key, {})[suffix] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{path}: not a readable tar shard ({_first_line(exc)})") from None
    return out


class ShardReader:
    """Random access to the samples of webdataset shards, for training clips.

    webdataset reads shards as streams; a resumable training run needs sample ``i`` at step ``k``
    whatever came before, so the shards' tar headers are indexed once (offsets of every member) and a
    clip reads only its sample's arrays (written here: no maintained library offers indexed tar
    access to webdataset shards without converting them). ``videos`` lists one entry per sample
    (``id`` = its key, ``n_frames``, ``fps``), the shape :class:`geo4d_model.train.data.ExportClips`
    takes; calling ``reader(sample_index, start, n_frames)`` returns the clip dict of
    :func:`read_export_clip` (poses relative to the sample's first frame, which the targets re-base).
    """

    def __init__(self, root: str | Path) -> None:
        from storage.shards import read_shards_manifest, shard_paths

        self.root = Path(root)
        manifest = read_shards_manifest(self.root)
        self._entries: list[tuple[str, str, dict[str, tuple[int, int]]]] = []
        for url in shard_paths(self.root):
            for key, members in _index_shard(Path(url)).items():
                missing = sorted(set(_SHARD_MEMBERS) - set(members))
                if missing:
                    raise InputError(f"{url}: sample {key} lacks {', '.join(missing)}")
                self._entries.append((url, key, members))
        if not self._entries:
            raise InputError(f"{self.root}: the shards hold no samples ({manifest.get('n_samples', 0)} listed)")
        self.videos = [{"id": key, "n_frames": self._frames(i), "fps": self._fps(i)}
                       for i, (_, key, _) in enumerate(self._entries)]

    def _member(self, index: int, member: str, limit: int | None = None) -> bytes:
        """The bytes of one member of sample ``index`` (its first ``limit`` bytes), read by offset."""
        url, _, members = self._entries[index]
        offset, size = members[member]
        with open(url, "rb") as f:
            f.seek(offset)
            return f.read(size if limit is None else min(size, limit))

    def _fps(self, index: int) -> float:
        """The sample's source frame rate (its scores.json provenance), 24 when not recorded."""
        import json

        if "scores.json" not in self._entries[index][2]:
            return 24.0
        meta = json.loads(self._member(index, "scores.json"))
        fps = (meta.get("provenance") or {}).get("fps") or meta.get("fps")
        return float(fps) if fps else 24.0

    def _array(self, index: int, member: str) -> np.ndarray:
        import io

        return np.load(io.BytesIO(self._member(index, member)), allow_pickle=False)

    def _frames(self, index: int) -> int:
        """The sample's frame count, from the header of its depth array only."""
        import io

        buf = io.BytesIO(self._member(index, "depth.npy", limit=4096))
        major, _ = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(buf)
        return int(shape[0])

    def __call__(self, sample_index: int, start: int, n_frames: int) -> dict[str, np.ndarray]:
        if not 0 <= sample_index < len(self._entries):
            raise InputError(f"{self.root}: no sample {sample_index} (the shards hold {len(self._entries)})")
        sl = slice(int(start), int(start) + int(n_frames))
        return {name: self._array(sample_index, member)[sl] for member, name in _SHARD_MEMBERS.items()}

