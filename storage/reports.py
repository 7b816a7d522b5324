"""Per-video report figures kept in the store: ``STORE/reports/<video_id>.png``.

``reports/`` is a Zarr group of the store (as ``leases/`` is), so a Zarr reader listing the store's
members sees a known group there; the PNG files inside it are plain objects no Zarr reader lists.
A report is written under a temporary name and renamed into place (on object stores the object
appears whole), so a reader never sees half a figure. Locations may be fsspec URLs (``s3://…``);
``storage_options`` are the store's fsspec options.

Example:
    >>> from storage.store import Store                          # doctest: +SKIP
    >>> write_report(Store("runs.zarr"), "clip-0123456789", png)  # doctest: +SKIP
    'runs.zarr/reports/clip-0123456789.png'
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np

from geo4d.errors import StoreError
from storage.store import _POSE_KEY, REPORTS_GROUP, Store, require_group

__all__ = ["REPORTS_GROUP", "report_location", "write_report", "read_report", "has_report", "read_report_inputs"]



def _fs(location: str, storage_options: dict | None):
    import fsspec

    return fsspec.core.url_to_fs(location, **(storage_options or {}))


def report_location(store: Store, video_id: str) -> str:
    """Where the report of ``video_id`` is (path or URL, in the store's own spelling)."""
    return f"{store.location.rstrip('/')}/{REPORTS_GROUP}/{video_id}.png"


def _path(store: Store, video_id: str, storage_options: dict | None):
    fs, root = _fs(store.location, storage_options)
    return fs, f"{root.rstrip('/')}/{REPORTS_GROUP}/{video_id}.png"


def write_report(store: Store, video_id: str, png: bytes, storage_options: dict | None = None) -> str:
    """Store ``png`` (the figure's bytes) as the report of ``video_id``, replacing any; returns
    :func:`report_location`. Raises :class:`StoreError` for a video the store does not hold."""
    store.video_info(video_id)
    if REPORTS_GROUP not in store.root:
        require_group(store.root, REPORTS_GROUP)
    fs, path = _path(store, video_id, storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(png)
    try:
        fs.mv(tmp, path)
    except BaseException:
        fs.rm(tmp)
        raise
    return report_location(store, video_id)


def has_report(store: Store, video_id: str, storage_options: dict | None = None) -> bool:
    """Whether a report of ``video_id`` is stored."""
    fs, path = _path(store, video_id, storage_options)
    return bool(fs.exists(path))


def read_report(store: Store, video_id: str, storage_options: dict | None = None) -> bytes:
    """The stored report figure (PNG bytes) of ``video_id``; :class:`StoreError` when there is none."""
    fs, path = _path(store, video_id, storage_options)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise StoreError(f"{store.location}: no report of video {video_id!r} (geo4d report draws one)") from None


def read_report_inputs(store: Store, video_id: str, shown: Sequence[int]) -> dict[str, np.ndarray]:
    """What a report figure draws, reading only the frames it shows (not the fused points).

    Returns:
        ``frames`` (S, H, W, 3) uint8, ``depth`` and ``confidence`` (S, H, W) of the frames ``shown``
        (S of them); ``intrinsics`` (T, 3, 3) and ``world_from_cam`` (T, 4, 4) of every frame.
    """
    idx = np.asarray(list(shown), dtype=np.int64)
    out = {"frames": store.video_array(video_id, "frames").oindex[idx]}
    for name in ("depth", "confidence"):
        out[name] = store.video_array(video_id, f"fused/{name}").oindex[idx]
    out["intrinsics"] = np.asarray(store.video_array(video_id, "fused/intrinsics")[:], np.float64)
    out["world_from_cam"] = np.asarray(store.video_array(video_id, f"fused/{_POSE_KEY}")[:], np.float64)
    return out
