"""Training shards: webdataset tar files of 16-frame clips or whole shots (issue 15, ``--format webdataset``).

Written with the ``webdataset`` library (:class:`webdataset.ShardWriter`; shards of a target size)
and read back with :class:`webdataset.WebDataset`. Layout of ``OUT``::

    OUT/<prefix>-000000.tar …   tar shards, each sample a group of members named <key>.<field>
    OUT/shards.json             manifest, written last: counts, sizes and keys of every shard

Each sample (one clip of ``V`` frames, or a whole shot: ``V`` = its length):

    __key__               ``<video id>_shot<NNN>_<SSSSSS>``: video, shot index, first frame *in the video*
                          (dots of the video id become ``_``: webdataset splits keys at dots; the
                          exact id is in scores.json)
    frames.npy            uint8   (V, H, W, 3) RGB — raw arrays, not PNG/JPEG: exact, and no codec to
                          decode in the loader (the tar is larger; compress the shards if needed)
    depth.npy             float32 (V, H, W)    z-depth, 0 = invalid
    confidence.npy        float32 (V, H, W)    0 = invalid
    intrinsics.npy        float32 (V, 3, 3)    K per frame
    world_from_cam.npy    float32 (V, 4, 4)    camera-to-world relative to the *sample's* first frame
                          (``[0] = I``; OpenCV axes); that frame's pose in the shot's world frame
                          is ``scores.json["shot_world_from_cam0"]``
    scores.json           {"video_id", "shot", "start" (first frame in the video), "shot_start",
                           "n_frames", "scores": the shot's quality scores, "provenance": …,
                           "shot_world_from_cam0": 4×4}

Samples are shuffled across shots, deterministically by ``seed``: with a ``load`` callable the
descriptors (:class:`SampleRef`, small) are listed and permuted, and loaded one at a time while
writing (nothing else is held in memory); without it the samples themselves pass through a shuffle
buffer of ``shuffle_buffer`` samples. A shard is closed once its payload reaches ``target_bytes``,
so every shard but the last holds ``target_bytes`` plus less than one sample (plus 512-byte tar
headers). Writing is atomic: shards go to temporary names first and are renamed only when all are
complete; ``shards.json`` is replaced last, so a reader that starts from it never sees a partial set.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geo4d.cameras import check_shape, invert_pose
from geo4d.errors import InputError

__all__ = ["MiB", "SHARDS_MANIFEST", "SampleRef", "ShardSample", "ShardInfo", "shot_samples", "slice_sample",
           "write_shards", "read_shard_samples", "read_shards_manifest", "shard_paths"]

MiB = 1 << 20
SHARDS_MANIFEST = "shards.json"
FORMAT = "geo4d-webdataset"
FORMAT_VERSION = 1
FIELDS = {
    "frames.npy": "uint8 (V, H, W, 3) RGB",
    "depth.npy": "float32 (V, H, W) z-depth, 0 = invalid",
    "confidence.npy": "float32 (V, H, W), 0 = invalid",
    "intrinsics.npy": "float32 (V, 3, 3) K per frame",
    "world_from_cam.npy": "float32 (V, 4, 4) camera-to-world, [0] = I (the sample's first frame is its world frame)",
    "scores.json": "the shot's scores, provenance, and where the sample lies in its video and shot",
}
_ARRAYS = ("frames", "depth", "confidence", "intrinsics", "world_from_cam")


@dataclass(frozen=True)
class SampleRef:
    """Where a sample lies: frames ``start … start + length − 1`` of shot ``shot`` of ``video_id``
    (``start`` counted in the shot; the shot starts at video frame ``shot_start``)."""

    video_id: str
    shot: int
    start: int
    length: int
    shot_start: int = 0

    @property
    def key(self) -> str:
        """The webdataset ``__key__``: ``<video id>_shot<NNN>_<first frame in the video, 6 digits>``."""
        return f"{self.video_id.replace('.', '_')}_shot{self.shot:03d}_{self.shot_start + self.start:06d}"


def shot_samples(video_id: str, shot: int, n_frames: int, *, unit: Literal["clip", "shot"] = "clip",
                 clip_frames: int = 16, stride: int = 16, shot_start: int = 0) -> list[SampleRef]:
    """The samples of one shot of ``n_frames`` frames: the whole shot (``unit="shot"``), or clips of
    ``clip_frames`` starting every ``stride`` frames (``unit="clip"``; a shot shorter than one clip
    gives none, the frames after the last whole clip are left out).

    >>> [r.start for r in shot_samples("v", 0, 40, clip_frames=16, stride=8)]
    [0, 8, 16, 24]
    """
    if unit not in ("clip", "shot"):
        raise InputError(f"shards: unit {unit!r} is unknown (expected 'clip' or 'shot')")
    if clip_frames < 1 or stride < 1:
        raise InputError(f"shards: clip_frames and stride must be >= 1, got {clip_frames} and {stride}")
    if unit == "shot":
        return [SampleRef(video_id, shot, 0, n_frames, shot_start)] if n_frames > 0 else []
    return [SampleRef(video_id, shot, s, clip_frames, shot_start)
            for s in range(0, n_frames - clip_frames + 1, stride)]


def _checked_shape(x: np.ndarray, expected: tuple, name: str) -> None:
    """:func:`geo4d.cameras.check_shape` as an :class:`InputError` (expected vs got, one line)."""
    try:
        check_shape(x, expected, name)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


@dataclass
class ShardSample:
    """One sample's arrays (see the module docstring for shapes), its scores and provenance.

    The arrays are converted to the shard dtypes (uint8 frames, float32 otherwise) and checked
    against each other on construction.
    """

    ref: SampleRef
    frames: np.ndarray
    depth: np.ndarray
    confidence: np.ndarray
    intrinsics: np.ndarray
    world_from_cam: np.ndarray
    scores: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    shot_world_from_cam0: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self) -> None:
        where = f"sample {self.ref.key}"
        if np.asarray(self.frames).dtype != np.uint8:
            raise InputError(f"{where}: frames must be uint8, got {np.asarray(self.frames).dtype}")
        self.frames = np.ascontiguousarray(self.frames)
        _checked_shape(self.frames, (self.ref.length, None, None, 3), f"{where} frames")
        V, H, W = self.frames.shape[:3]
        for name, shape in (("depth", (V, H, W)), ("confidence", (V, H, W)), ("intrinsics", (V, 3, 3)),
                            ("world_from_cam", (V, 4, 4))):
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            _checked_shape(arr, shape, f"{where} {name}")
            setattr(self, name, arr)

    def to_webdataset(self) -> dict[str, Any]:
        """The sample as webdataset writes it (``__key__`` and one entry per member)."""
        r = self.ref
        info = {"video_id": r.video_id, "shot": r.shot, "start": r.shot_start + r.start, "shot_start": r.shot_start,
                "n_frames": r.length, "scores": self.scores, "provenance": self.provenance,
                "shot_world_from_cam0": np.asarray(self.shot_world_from_cam0, dtype=np.float64).tolist()}
        out: dict[str, Any] = {"__key__": r.key, "scores.json": info}
        out.update({f"{name}.npy": getattr(self, name) for name in _ARRAYS})
        return out


def slice_sample(ref: SampleRef, shot: Mapping[str, np.ndarray], scores: Mapping[str, Any] | None = None,
                 provenance: Mapping[str, Any] | None = None) -> ShardSample:
    """The sample ``ref`` cut from a whole shot's arrays (frame axis first, frame 0 = the shot's first).

    ``shot`` has ``frames``, ``depth``, ``confidence``, ``intrinsics`` and ``world_from_cam`` (the
    shot's poses, its own world frame). The poses are re-based on the sample's first frame:
    ``P'_i = P_start⁻¹ P_i`` (so ``P'_0 = I``); ``P_start`` is kept as ``shot_world_from_cam0``.
    """
    missing = [n for n in _ARRAYS if n not in shot]
    if missing:
        raise InputError(f"sample {ref.key}: the shot's arrays lack {missing}")
    n = int(np.shape(shot["depth"])[0])
    if ref.start < 0 or ref.start + ref.length > n:
        raise InputError(f"sample {ref.key}: frames {ref.start}–{ref.start + ref.length - 1} are outside the shot's {n}")
    sl = slice(ref.start, ref.start + ref.length)
    poses = np.asarray(shot["world_from_cam"][sl], dtype=np.float64)
    first = poses[0].copy()
    rebased = invert_pose(first) @ poses
    rebased[0] = np.eye(4)
    return ShardSample(ref, np.asarray(shot["frames"][sl]), np.asarray(shot["depth"][sl]),
                       np.asarray(shot["confidence"][sl]), np.asarray(shot["intrinsics"][sl]), rebased,
                       dict(scores or {}), dict(provenance or {}), first)


@dataclass(frozen=True)
class ShardInfo:
    """A written shard: its path, index, number of samples, size on disk (bytes) and sample keys."""

    path: Path
    index: int
    n_samples: int
    n_bytes: int
    keys: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.path.name, "index": self.index, "n_samples": self.n_samples,
                "n_bytes": self.n_bytes, "keys": list(self.keys)}


def _as_sample(item: ShardSample | Mapping[str, Any]) -> ShardSample:
    """A :class:`ShardSample` from itself or from a mapping of its fields."""
    if isinstance(item, ShardSample):
        return item
    if isinstance(item, Mapping):
        return ShardSample(**item)
    raise InputError(f"shards: a sample must be a ShardSample or a mapping of its fields, got {type(item).__name__}")


def _buffer_shuffled(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """``items`` in a shuffled order using a buffer of ``size`` items (webdataset's own shuffle is for
    reading; this one is deterministic by ``rng`` and bounded in memory): each new item replaces a
    random one of the full buffer, which is yielded; the rest leave in a random order at the end."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], item = item, buf[i]
        yield item
    for i in rng.permutation(len(buf)):
        yield buf[int(i)]


def _ordered(samples: Iterable[Any], load: Callable[[Any], Any] | None, seed: int,
             shuffle_buffer: int) -> Iterator[ShardSample]:
    """The samples to write, shuffled by ``seed`` (see the module docstring)."""
    rng = np.random.default_rng(int(seed))
    if load is None:
        yield from (_as_sample(s) for s in _buffer_shuffled(samples, max(int(shuffle_buffer), 1), rng))
        return
    refs = list(samples)
    for i in rng.permutation(len(refs)):
        yield _as_sample(load(refs[int(i)]))


def _tmp_pattern(out: Path, prefix: str) -> str:
    """The ShardWriter pattern of the temporary shard names (``%`` of the directory escaped)."""
    esc = lambda text: text.replace("%", "%%")  # noqa: E731
    return f"{esc(str(out))}{os.sep}.{esc(prefix)}-%06d.tar.tmp-{os.getpid()}"


def _write_tmp_shards(ordered: Iterator[ShardSample], out: Path, prefix: str,
                      target_bytes: int) -> list[tuple[Path, list[str]]]:
    """Write the samples into temporary shards; ``[(tmp path, keys)]`` in shard order."""
    import webdataset as wds

    shards: list[tuple[Path, list[str]]] = []
    sink = None
    try:
        for sample in ordered:
            if sink is None:  # opened at the first sample: no samples, no (empty) shard
                sink = wds.ShardWriter(_tmp_pattern(out, prefix), maxsize=target_bytes, verbose=0, mtime=0.0)
            sink.write(sample.to_webdataset())
            if not shards or shards[-1][0] != Path(sink.fname):
                shards.append((Path(sink.fname), []))
            shards[-1][1].append(sample.ref.key)
    except BaseException:
        if sink is not None:
            sink.close()
        for p, _ in shards:
            p.unlink(missing_ok=True)
        raise
    if sink is not None:
        sink.close()
    return shards


def _check_keys(shards: list[tuple[Path, list[str]]]) -> None:
    """Raise :class:`InputError` when two samples share a key (a reader could not tell them apart)."""
    keys = [k for _, ks in shards for k in ks]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:3]
        for p, _ in shards:
            p.unlink(missing_ok=True)
        raise InputError(f"shards: duplicate sample keys {dup}")


def _publish(shards: list[tuple[Path, list[str]]], out: Path, prefix: str) -> list[ShardInfo]:
    """Rename the finished temporary shards to ``<prefix>-NNNNNN.tar``; remove older shards of the
    same prefix beyond the new ones (the manifest is removed first: the set is in flux)."""
    (out / SHARDS_MANIFEST).unlink(missing_ok=True)
    infos = []
    for i, (tmp, keys) in enumerate(shards):
        dest = out / f"{prefix}-{i:06d}.tar"
        os.replace(tmp, dest)
        infos.append(ShardInfo(dest, i, len(keys), dest.stat().st_size, tuple(keys)))
    kept = {info.path.name for info in infos}
    for old in out.glob(f"{glob.escape(prefix)}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if old.name not in kept:
            old.unlink()
    return infos


def _write_manifest(out: Path, infos: list[ShardInfo], meta: dict[str, Any]) -> None:
    """``shards.json`` (through a temporary name)."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
                "n_shards": len(infos), "n_samples": sum(i.n_samples for i in infos),
                "n_bytes": sum(i.n_bytes for i in infos), "fields": FIELDS,
                "shards": [i.to_json() for i in infos]}
    tmp = out / f".{SHARDS_MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / SHARDS_MANIFEST)


def write_shards(samples: Iterable[SampleRef | ShardSample | Mapping[str, Any]], out_dir: str | os.PathLike, *,
                 load: Callable[[SampleRef], ShardSample | Mapping[str, Any]] | None = None,
                 target_bytes: int = 256 * MiB, seed: int = 0, prefix: str = "shard", shuffle_buffer: int = 256,
                 meta: Mapping[str, Any] | None = None) -> list[ShardInfo]:
    """Write webdataset tar shards of about ``target_bytes`` each into ``out_dir`` (created).

    Args:
        samples: descriptors (:class:`SampleRef`) when ``load`` is given, else the samples themselves
            (:class:`ShardSample` or mappings of its fields).
        out_dir: output directory; earlier shards of the same ``prefix`` are replaced.
        load: ``load(ref) -> sample``, called once per descriptor in the shuffled order.
        target_bytes: a shard is closed once its payload reaches this many bytes.
        seed: the shuffle's seed: the same samples and seed give the same shards, byte for byte.
        prefix: shard file names ``<prefix>-NNNNNN.tar``.
        shuffle_buffer: buffer size of the shuffle when ``load`` is None.
        meta: extra JSON-able entries of ``shards.json`` (e.g. ``unit``, ``clip_frames``, ``stride``).

    Returns:
        The shards written, in order (none for no samples; ``shards.json`` is written either way).
    """
    if not isinstance(prefix, str) or not prefix or "/" in prefix or "." in prefix:
        raise InputError(f"shards: prefix {prefix!r} must be a non-empty file name without '/' or '.'")
    if int(target_bytes) < 1:
        raise InputError(f"shards: target_bytes must be >= 1, got {target_bytes}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    shards = _write_tmp_shards(_ordered(samples, load, seed, shuffle_buffer), out, prefix, int(target_bytes))
    _check_keys(shards)
    infos = _publish(shards, out, prefix)
    _write_manifest(out, infos, {"prefix": prefix, "seed": int(seed), "target_bytes": int(target_bytes),
                                 **dict(meta or {})})
    return infos


def read_shards_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``shards.json`` of a directory written by :func:`write_shards`."""
    f = Path(out_dir) / SHARDS_MANIFEST
    if not f.is_file():
        raise InputError(f"{f}: missing; {out_dir} is not a complete webdataset export")
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{f}: not valid JSON ({exc})") from exc


def shard_paths(path_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The shard files meant by a directory (its ``shards.json``), a glob pattern, a file or a list."""
    if isinstance(path_or_glob, (list, tuple)):
        return [p for item in path_or_glob for p in shard_paths(item)]
    p = Path(path_or_glob)
    if p.is_dir():
        return [str(p / s["name"]) for s in read_shards_manifest(p)["shards"]]
    found = sorted(glob.glob(str(path_or_glob)))
    if not found:
        raise InputError(f"{path_or_glob}: no shard files found")
    return found


def _renamed(sample: dict[str, Any]) -> dict[str, Any]:
    """A decoded webdataset sample with its member names as plain keys (``depth.npy`` → ``depth``)."""
    out = {"__key__": sample["__key__"], "__url__": sample.get("__url__")}
    out.update({k.split(".")[0]: v for k, v in sample.items() if not k.startswith("__")})
    return out


def read_shard_samples(path_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> Iterator[dict[str, Any]]:
    """Iterate the samples of webdataset shards with :class:`webdataset.WebDataset`, decoded.

    Yields dicts with ``__key__``, ``__url__`` (the shard), ``frames``, ``depth``, ``confidence``,
    ``intrinsics``, ``world_from_cam`` (numpy arrays) and ``scores`` (the decoded scores.json), in
    the order written (no shuffle at reading; shuffle in the training pipeline if wanted).
    """
    import webdataset as wds

    urls = shard_paths(path_or_glob)
    if not urls:
        return
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode()
    for sample in dataset:
        yield _renamed(sample)
