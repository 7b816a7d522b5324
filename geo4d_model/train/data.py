"""Clip sources of the training data and their batching.

A *clip source* (:class:`ClipSource`) turns any index ≥ 0 into one training sample
(:func:`geo4d_model.train.targets.clip_targets` plus the frame-rate condition ``fs``), deterministic
in ``(index, size, n_frames)``:

* :class:`SyntheticClips` — procedural SYNTHETIC scenes (:mod:`geo4d.synthetic`) rendered at the
  requested size, scene seed ``seed + index``;
* :class:`ExportClips` — clips of the videos of a ``geo4d export`` dataset, read through a reader the
  caller injects (this layer never touches Zarr/Parquet; :mod:`storage.training_data` reads them),
  centre-cropped and resized to the requested size (:func:`resize_clip`);
* :class:`MixedSource` — several sources mixed by weight.

:func:`collate` stacks samples into the batch layout of the U-Net (channel before time).

Example:
    >>> src = SyntheticClips(seed=0, scene_frames=8)
    >>> batch = collate([src.clip(i, (16, 24), 4) for i in range(2)])
    >>> tuple(batch["pointmap"].shape), tuple(batch["valid"].shape), batch["fs"].tolist()
    ((2, 3, 4, 16, 24), (2, 4, 16, 24), [24, 24])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from geo4d.cameras import check_shape
from geo4d.errors import InputError
from geo4d.synthetic import RenderedVideo, make_scene, render
from geo4d_model.train.targets import clip_targets

__all__ = ["ClipSource", "SyntheticClips", "ExportClips", "MixedSource", "collate", "resize_clip",
           "SYNTHETIC_CLIPS_NAME", "IMAGE_FIELDS"]

SYNTHETIC_CLIPS_NAME = "synthetic (procedural scenes)"
#: Sample fields (V, C, H, W) that a batch holds as (B, C, V, H, W).
IMAGE_FIELDS = ("frames", "pointmap", "disparity", "ray", "moment")
#: A clip reader: ``(video_index, start, n_frames) → {rgb, depth, intrinsics, world_from_cam}``.
ClipReader = Callable[[int, int, int], Mapping[str, np.ndarray]]


@runtime_checkable
class ClipSource(Protocol):
    """Where training clips come from.

    Attributes:
        name: for humans (a synthetic source says so).
        fs: the frame-rate condition of its clips (each sample also carries its own ``fs``).
    """

    name: str
    fs: int

    def clip(self, index: int, size: tuple[int, int], n_frames: int) -> dict[str, np.ndarray]:
        """Sample ``index`` (any int ≥ 0) at ``size`` = (H, W) with ``n_frames`` frames; deterministic."""
        ...


def _check_request(source: str, index: int, size: Sequence[int], n_frames: int) -> tuple[int, int]:
    """(H, W) of a valid request; one-line :class:`InputError` naming ``source`` otherwise."""
    if int(index) != index or index < 0:
        raise InputError(f"{source}: clip index must be an integer >= 0, got {index!r}")
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise InputError(f"{source}: size must be (H, W) positive integers, got {tuple(size)!r}")
    if int(n_frames) != n_frames or n_frames < 1:
        raise InputError(f"{source}: n_frames must be an integer >= 1, got {n_frames!r}")
    return int(size[0]), int(size[1])


def _draw(seed: int, index: int, n: int) -> int:
    """A deterministic draw in ``[0, n)`` from ``(seed, index)``."""
    return int(np.random.default_rng([int(seed), int(index)]).integers(0, n))


@functools.lru_cache(maxsize=4)
def _rendered_scene(seed: int, height: int, width: int, n_frames: int, fps: float, n_static: int,
                    n_dynamic: int) -> RenderedVideo:
    """The rendered synthetic scene (cached: a clip asked for again, e.g. a validation clip, is not
    re-rendered; 24 frames at 32×48 render in ~0.15 s, at 320×512 in ~8 s). Read-only by convention."""
    return render(make_scene(seed, n_frames=n_frames, height=height, width=width, fps=fps,
                             n_static=n_static, n_dynamic=n_dynamic))


@dataclass(frozen=True)
class SyntheticClips:
    """SYNTHETIC training clips: index ``i`` is the procedural scene of seed ``seed + i``
    (:func:`geo4d.synthetic.make_scene`, ``scene_frames`` frames, rendered directly at the requested
    size), of which ``n_frames`` consecutive frames from a start drawn from ``(seed, i)``."""

    seed: int = 0
    scene_frames: int = 24
    fs: int = 24
    n_static: int = 4
    n_dynamic: int = 3
    name: ClassVar[str] = SYNTHETIC_CLIPS_NAME

    def __post_init__(self) -> None:
        for key, low in (("seed", 0), ("scene_frames", 1), ("fs", 1), ("n_static", 0), ("n_dynamic", 0)):
            value = getattr(self, key)
            if int(value) != value or value < low:
                raise InputError(f"{self.name}: {key} must be an integer >= {low}, got {value!r}")

    def clip(self, index: int, size: tuple[int, int], n_frames: int) -> dict[str, np.ndarray]:
        """Sample ``index`` at ``size`` = (H, W), ``n_frames`` ≤ ``scene_frames`` frames."""
        H, W = _check_request(self.name, index, size, n_frames)
        if n_frames > self.scene_frames:
            raise InputError(f"{self.name}: n_frames {n_frames} > scene_frames {self.scene_frames}")
        seed = self.seed + int(index)
        r = _rendered_scene(seed, H, W, self.scene_frames, float(self.fs), self.n_static, self.n_dynamic)
        start = _draw(self.seed, index, self.scene_frames - n_frames + 1)
        sl = slice(start, start + n_frames)
        g = r.geometry
        sample = clip_targets(r.frames[sl], g.depth[sl], g.intrinsics[sl], g.world_from_cam[sl],
                              name=f"{self.name} scene {seed} frames {start}–{start + n_frames - 1}")
        sample["fs"] = np.int64(self.fs)
        return sample


def _centre_crop_box(H: int, W: int, h: int, w: int) -> tuple[int, int, int, int]:
    """``(y0, x0, Hc, Wc)``: the largest centred crop of an H×W image with the aspect ratio of h×w."""
    if W * h > H * w:  # too wide: crop columns
        Wc = min(W, max(1, round(H * w / h)))
        return 0, (W - Wc) // 2, H, Wc
    Hc = min(H, max(1, round(W * h / w)))
    return (H - Hc) // 2, 0, Hc, W


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source indices of nearest sampling with pixel centres: ``⌊(i + 0.5) n_in / n_out⌋`` (what
    ``torch.nn.functional.interpolate(mode="nearest-exact")`` picks)."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def _resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (V, H, W, 3) → uint8 (V, h, w, 3): bilinear, antialiased (as inference resizes frames)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resize_clip(frames: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray,
                size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-crop a clip to the aspect ratio of ``size`` = (h, w), then resize it to h×w.

    Frames bilinear (antialiased), depth nearest (no value is blended across a depth edge; sky stays
    sky), intrinsics shifted by the crop ``(x0, y0)`` and scaled by ``(sx, sy) = (w/Wc, h/Hc)`` with
    pixel centres kept at integers: ``f' = f s``, ``c' = (c − offset + 0.5) s − 0.5``.

    Args:
        frames: (V, H, W, 3) uint8; depth: (V, H, W); intrinsics: (V, 3, 3) or (3, 3).

    Returns:
        frames (V, h, w, 3) uint8, depth (V, h, w) (its dtype), intrinsics (V, 3, 3) float64.
    """
    check_shape(depth, (None, None, None), "depth")
    V, H, W = depth.shape
    check_shape(frames, (V, H, W, 3), "frames")
    K = np.array(np.broadcast_to(np.asarray(intrinsics, dtype=np.float64), (V, 3, 3)))
    h, w = int(size[0]), int(size[1])
    if (H, W) == (h, w):
        return frames, depth, K
    y0, x0, Hc, Wc = _centre_crop_box(H, W, h, w)
    frames, depth = frames[:, y0:y0 + Hc, x0:x0 + Wc], depth[:, y0:y0 + Hc, x0:x0 + Wc]
    depth = depth[:, _nearest_index(h, Hc)][:, :, _nearest_index(w, Wc)]
    sx, sy = w / Wc, h / Hc
    K[:, 0, 0] *= sx
    K[:, 1, 1] *= sy
    K[:, 0, 2] = (K[:, 0, 2] - x0 + 0.5) * sx - 0.5
    K[:, 1, 2] = (K[:, 1, 2] - y0 + 0.5) * sy - 0.5
    return _resize_frames(frames, (h, w)), depth, K


class ExportClips:
    """Training clips from the videos of a ``geo4d export`` dataset.

    Every (video, start) with ``start + n_frames ≤ video frames`` is one clip; index ``i`` is the
    ``(i mod N)``-th pair of a permutation of all N pairs seeded by ``(seed, n_frames)`` (wraps
    around). Clips are centre-cropped and resized to the requested size (:func:`resize_clip`).

    Args:
        videos: per video a mapping with ``id``, ``n_frames`` and ``fps`` (what
            :func:`storage.training_data.export_videos` lists).
        read_clip: ``(video_index, start, n_frames) → {rgb (V,H,W,3) uint8, depth (V,H,W) (0 =
            invalid), intrinsics (V,3,3), world_from_cam (V,4,4)}``, e.g. a
            :class:`storage.training_data.ExportReader`.
        seed: the permutation's seed.
        fs: the frame-rate condition of every clip, or None for each video's own fps (rounded, ≥ 1).
        name: for humans and errors (e.g. ``"export dataset/"``).
    """

    def __init__(self, videos: Sequence[Mapping], read_clip: ClipReader, *, seed: int = 0, fs: int | None = None,
                 name: str = "export") -> None:
        if not videos:
            raise InputError(f"{name}: no videos to train on")
        self.videos, self.read_clip, self.seed, self.name = list(videos), read_clip, int(seed), name
        self._fs = None if fs is None else int(fs)
        self.fs = self._fs or int(np.median([self._video_fs(v) for v in self.videos]))
        self._orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _video_fs(video: Mapping) -> int:
        fps = video.get("fps")
        return max(1, round(float(fps))) if fps else 24

    def _order(self, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """(cumulative clip counts per video (n_videos + 1,), permutation of all clips) for ``n_frames``."""
        if n_frames not in self._orders:
            counts = np.array([max(int(v["n_frames"]) - n_frames + 1, 0) for v in self.videos], np.int64)
            if counts.sum() == 0:
                longest = max(int(v["n_frames"]) for v in self.videos)
                raise InputError(f"{self.name}: no video has {n_frames} frames (the longest has {longest})")
            perm = np.random.default_rng([self.seed, n_frames]).permutation(int(counts.sum()))
            self._orders[n_frames] = (np.concatenate([[0], np.cumsum(counts)]), perm)
        return self._orders[n_frames]

    def locate(self, index: int, n_frames: int) -> tuple[int, int]:
        """``(video_index, start)`` of clip ``index``."""
        cum, perm = self._order(n_frames)
        flat = int(perm[int(index) % len(perm)])
        k = int(np.searchsorted(cum, flat, side="right") - 1)
        return k, flat - int(cum[k])

    def clip(self, index: int, size: tuple[int, int], n_frames: int) -> dict[str, np.ndarray]:
        """Sample ``index`` at ``size`` = (H, W) with ``n_frames`` frames."""
        H, W = _check_request(self.name, index, size, n_frames)
        k, start = self.locate(index, n_frames)
        raw = self.read_clip(k, start, n_frames)
        frames, depth, K = resize_clip(np.asarray(raw["rgb"]), np.asarray(raw["depth"]),
                                       np.asarray(raw["intrinsics"]), (H, W))
        video = self.videos[k]
        sample = clip_targets(frames, depth, K, np.asarray(raw["world_from_cam"]),
                              name=f"{self.name} video {video['id']} frames {start}–{start + n_frames - 1}")
        sample["fs"] = np.int64(self._fs or self._video_fs(video))
        return sample


class MixedSource:
    """Several clip sources mixed by weight: index ``i`` picks source ``k`` with probability
    ``w_k / Σ w`` from a draw seeded by ``(seed, i)`` and returns that source's clip ``i``
    (sources permute their own indices, so no two mixed indices give the same clip)."""

    def __init__(self, sources: Sequence[ClipSource], weights: Sequence[float] | None = None, seed: int = 0) -> None:
        if not sources:
            raise InputError("mixed data: no sources")
        w = np.ones(len(sources)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(sources),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise InputError(f"mixed data: weights must be {len(sources)} finite numbers >= 0 with a positive sum, "
                             f"got {list(np.atleast_1d(w))}")
        self.sources, self.seed = list(sources), int(seed)
        self._cum = np.cumsum(w / w.sum())
        self.name = " + ".join(s.name for s in self.sources)
        self.fs = int(self.sources[0].fs)

    def pick(self, index: int) -> int:
        """Which source clip ``index`` comes from."""
        u = np.random.default_rng([self.seed, int(index)]).random()
        return min(int(np.searchsorted(self._cum, u, side="right")), len(self.sources) - 1)

    def clip(self, index: int, size: tuple[int, int], n_frames: int) -> dict[str, np.ndarray]:
        """Sample ``index`` of the source :meth:`pick` chooses."""
        _check_request(self.name, index, size, n_frames)
        return self.sources[self.pick(index)].clip(index, size, n_frames)


def collate(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch: :data:`IMAGE_FIELDS` (V, C, H, W) → (B, C, V, H, W), every other
    field gains a leading B (``valid``/``depth`` (B, V, H, W), ``scale``/``z_lower`` (B,)), ``fs`` (B,)
    long. Samples must have the same fields and shapes (one-line :class:`InputError` otherwise)."""
    if not samples:
        raise InputError("collate: no samples")
    keys = list(samples[0])
    out = {}
    for i, s in enumerate(samples):
        if sorted(s) != sorted(keys):
            raise InputError(f"collate: sample {i} has fields {sorted(s)}, sample 0 {sorted(keys)}")
    for key in keys:
        arrs = [np.asarray(s[key]) for s in samples]
        bad = next((i for i, a in enumerate(arrs) if a.shape != arrs[0].shape), None)
        if bad is not None:
            raise InputError(f"collate: field {key!r} of sample {bad} has shape {arrs[bad].shape}, "
                             f"sample 0 {arrs[0].shape}")
        t = torch.from_numpy(np.stack(arrs))
        if key in IMAGE_FIELDS:
            t = t.permute(0, 2, 1, 3, 4).contiguous()
        out[key] = t.long() if key == "fs" else t
    return out
