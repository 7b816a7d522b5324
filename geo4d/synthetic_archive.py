"""SYNTHETIC archives with known defects (issue 15): edited videos, static cameras, corrupted windows.

Test data for shot detection, per-shot reconstruction, quality scores and filters, with the ground
truth of every defect. Pure computation (NumPy and :mod:`geo4d.synthetic`); the files are written by
:mod:`storage.synthetic_archive`.

Videos (:class:`ArchiveVideoSpec` ``kind``):

* ``clean``: one scene of :func:`geo4d.synthetic.make_scene` (one shot).
* ``cut``: several scenes (one per seed) joined end to end (:func:`cut_video`): hard cuts, or fades
  over ``fade_frames`` frames at every boundary.
* ``static``: one scene whose camera never moves (:func:`static_camera_video`): every pose is the
  first one, so ``world_from_cam`` is the identity in every frame; the objects still move.
* ``corrupted``: a clean scene whose *windows* are spoiled by the synthetic predictor (its
  :class:`geo4d.synthetic_predictor.SyntheticNoise` is recorded in ``predictor_noise``: e.g.
  ``corrupt_windows``, ``ramp_corruption``); the video itself is clean.

Fades (``fade_kind``), over ``k = fade_frames`` frames centred on the boundary ``b`` (the first frame
of the next shot), frames ``b − ⌊k/2⌋ … b + k − ⌊k/2⌋ − 1``; transition frame ``j`` (0-based) has
weight ``w_j = (j + 1) / (k + 1)`` of the incoming side:

* ``black`` (fade through black): the outgoing shot's frames are darkened by ``1 − 2 w_j`` while
  ``w_j < ½``, the incoming shot's brightened by ``2 w_j − 1`` after (a frame at exactly ½ is
  black);
* ``cross`` (linear cross-fade): ``(1 − w_j) A + w_j B`` where the frame belongs to shot A (before
  ``b``) and is mixed with B's first frame, or belongs to B (from ``b`` on) and is mixed with A's
  last frame (the other shot's end frame is held). Frames before ``b`` have ``w_j < ½``: the
  dominant content is always the shot the frame belongs to.

Either way every frame belongs to exactly one shot, and its geometry is that shot's exact
geometry (a fade changes colours only). Each shot's geometry has its own world frame (the shot's
first camera, ``world_from_cam[0] = I``) and its own scene scale.

Example:
    >>> v = cut_video([0, 1], [6, 5], 16, 24)
    >>> v.frames.shape, v.boundaries, [g.n_frames for g in v.shots]
    ((11, 16, 24, 3), [6], [6, 5])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field

from geo4d.errors import InputError
from geo4d.geometry import Geometry
from geo4d.spec import Spec
from geo4d.synthetic import make_scene, render

__all__ = ["ArchiveVideoSpec", "ArchiveSpec", "ArchiveVideo", "cut_video", "static_camera_video",
           "clean_video", "build_video", "concatenated_geometry", "fade_weights", "FADE_KINDS"]

FADE_KINDS = ("black", "cross")


@dataclass
class ArchiveVideo:
    """One synthetic archive video with its ground truth.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB of the whole video.
        shots: the exact geometry of every shot, in order (shot k has ``shots[k].n_frames`` frames,
            its own world frame: ``shots[k].world_from_cam[0] = I``).
        boundaries: the first frame of every shot after the first (``len(shots) − 1`` increasing
            frame indices; ``[]`` for one shot).
        meta: JSON-able description (kind, seeds, fade, the predictor noise of a corrupted video).
    """

    frames: np.ndarray
    shots: list[Geometry]
    boundaries: list[int]
    meta: dict

    @property
    def shot_ranges(self) -> list[tuple[int, int]]:
        """``(start, end)`` (end exclusive) of every shot."""
        edges = [0, *self.boundaries, int(self.frames.shape[0])]
        return list(zip(edges[:-1], edges[1:]))


def _per_shot_lengths(seeds: Sequence[int], n_frames_each: int | Sequence[int]) -> list[int]:
    """The frame count of every shot (one int for all, or one per seed); each ≥ 1."""
    if not len(seeds):
        raise InputError("cut video: seeds is empty (need one seed per shot)")
    lengths = [int(n_frames_each)] * len(seeds) if np.isscalar(n_frames_each) else [int(n) for n in n_frames_each]
    if len(lengths) != len(seeds):
        raise InputError(f"cut video: n_frames_each has {len(lengths)} entries for {len(seeds)} seeds")
    if min(lengths) < 1:
        raise InputError(f"cut video: every shot needs >= 1 frame, got {lengths}")
    return lengths


def _check_fade(fade_frames: int, fade_kind: str, lengths: list[int]) -> None:
    """Raise :class:`InputError` unless the fades fit: ``fade_kind`` known, ``k ≥ 0``, and every shot
    holds the fades that touch it without overlap (``⌊k/2⌋`` frames at its end unless it is the
    last shot, ``k − ⌊k/2⌋`` at its start unless it is the first)."""
    if fade_kind not in FADE_KINDS:
        raise InputError(f"cut video: fade_kind {fade_kind!r} is unknown (expected one of {FADE_KINDS})")
    if fade_frames < 0:
        raise InputError(f"cut video: fade_frames must be >= 0, got {fade_frames}")
    before, after = fade_frames // 2, fade_frames - fade_frames // 2
    need = [(after if k else 0) + (before if k < len(lengths) - 1 else 0) for k in range(len(lengths))]
    if any(n < m for n, m in zip(lengths, need)):
        raise InputError(f"cut video: a fade of {fade_frames} frames does not fit shots of {lengths} frames")


def fade_weights(k: int) -> np.ndarray:
    """(k,) weights ``w_j = (j + 1) / (k + 1)`` of the incoming shot over a fade of ``k`` frames.

    >>> fade_weights(3).tolist()
    [0.25, 0.5, 0.75]
    """
    return (np.arange(k) + 1.0) / (k + 1.0)


def _apply_fade(frames: np.ndarray, original: np.ndarray, b: int, k: int, kind: str) -> None:
    """Fade in place the ``k`` frames around boundary ``b`` of ``frames`` (T, H, W, 3) uint8 from the
    unfaded ``original`` (same shape; see the module docstring): ``original[b − 1]`` and
    ``original[b]`` are the held end frames of the outgoing and incoming shots."""
    last_a = original[b - 1].astype(np.float64)
    first_b = original[b].astype(np.float64)
    for j, w in enumerate(fade_weights(k)):
        i = b - k // 2 + j
        own = original[i].astype(np.float64)
        if kind == "black":
            out = own * (1.0 - 2.0 * w if i < b else 2.0 * w - 1.0)
        else:
            out = (1.0 - w) * own + w * first_b if i < b else (1.0 - w) * last_a + w * own
        frames[i] = np.clip(out + 0.5, 0, 255).astype(np.uint8)


def cut_video(seeds: Sequence[int], n_frames_each: int | Sequence[int], height: int, width: int,
              fade_frames: int = 0, *, fade_kind: Literal["black", "cross"] = "black", fps: float = 10.0,
              n_dynamic: int = 3) -> ArchiveVideo:
    """An edited video: one synthetic scene per seed, joined by hard cuts or fades.

    Args:
        seeds: one scene seed per shot (``make_scene(seed, n, height, width)``).
        n_frames_each: frames per shot (one int, or one per seed).
        height, width: frame size.
        fade_frames: 0 (hard cuts) or ``k`` frames of fade at every boundary, ``⌊k/2⌋`` before it and
            the rest from it on (see the module docstring).
        fade_kind: ``black`` (through black) or ``cross`` (linear cross-fade).
        fps, n_dynamic: as :func:`geo4d.synthetic.make_scene`.

    Returns:
        :class:`ArchiveVideo`: frames (T, H, W, 3) with ``T = Σ n``, the shots' exact geometry, the
        boundaries ``[n_0, n_0 + n_1, …]``.
    """
    lengths = _per_shot_lengths(seeds, n_frames_each)
    _check_fade(int(fade_frames), fade_kind, lengths)
    rendered = [render(make_scene(int(s), n, height, width, fps=fps, n_dynamic=n_dynamic))
                for s, n in zip(seeds, lengths)]
    frames = np.concatenate([r.frames for r in rendered])
    boundaries = [int(b) for b in np.cumsum(lengths)[:-1]]
    original = frames.copy()
    for b in boundaries:
        _apply_fade(frames, original, b, int(fade_frames), fade_kind)
    meta = {"kind": "cut", "synthetic": True, "seeds": [int(s) for s in seeds], "shot_frames": lengths,
            "fade_frames": int(fade_frames), "fade_kind": fade_kind if fade_frames else None}
    return ArchiveVideo(frames, [r.geometry for r in rendered], boundaries, meta)


def static_camera_video(seed: int, n_frames: int = 48, height: int = 160, width: int = 256, *,
                        fps: float = 10.0, n_dynamic: int = 3) -> ArchiveVideo:
    """A video whose camera never moves: ``make_scene(seed, …)`` with every pose set to frame 0's.

    The scene's objects (placed for the drawn path, as without the override) still move; only the
    camera is fixed, so ``world_from_cam`` is the identity in every frame — a video that teaches
    camera poses nothing.
    """
    scene = make_scene(int(seed), n_frames, height, width, fps=fps, n_dynamic=n_dynamic)
    fixed = np.repeat(scene.scene_from_cam[:1], scene.n_frames, axis=0)
    r = render(replace(scene, scene_from_cam=fixed))
    meta = {"kind": "static", "synthetic": True, "seeds": [int(seed)], "shot_frames": [int(n_frames)]}
    return ArchiveVideo(r.frames, [r.geometry], [], meta)


def clean_video(seed: int, n_frames: int = 48, height: int = 160, width: int = 256, *,
                fps: float = 10.0, n_dynamic: int = 3) -> ArchiveVideo:
    """One scene of :func:`geo4d.synthetic.make_scene` as a one-shot archive video."""
    r = render(make_scene(int(seed), n_frames, height, width, fps=fps, n_dynamic=n_dynamic))
    meta = {"kind": "clean", "synthetic": True, "seeds": [int(seed)], "shot_frames": [int(n_frames)]}
    return ArchiveVideo(r.frames, [r.geometry], [], meta)


def concatenated_geometry(video: ArchiveVideo) -> Geometry:
    """The shots' geometry end to end, (T, …): frame ``i`` of shot ``k`` keeps its pose relative to
    shot ``k``'s first frame (so every shot's slice has ``world_from_cam[start] = I``); ``meta`` has
    ``shots``: ``[{"start", "end", "seed"}]`` (end exclusive)."""
    gs = video.shots
    dyn = [g.dynamic_mask if g.dynamic_mask is not None else np.zeros(g.depth.shape, bool) for g in gs]
    shots = [{"start": s, "end": e, "seed": seed}
             for (s, e), seed in zip(video.shot_ranges, video.meta.get("seeds", [None] * len(gs)))]
    meta = {**(gs[0].meta or {}), "archive": video.meta, "shots": shots,
            "world_frame": "the first camera of each shot (world_from_cam is I at every shot's start)"}
    return Geometry.from_depth(np.concatenate([g.depth for g in gs]), np.concatenate([g.intrinsics for g in gs]),
                               np.concatenate([g.world_from_cam for g in gs]), dynamic_mask=np.concatenate(dyn),
                               fps=gs[0].fps, meta=meta)


class ArchiveVideoSpec(Spec):
    """One video of a synthetic archive (see the module docstring for the kinds).

    ``seeds``/``shot_frames``: one per shot (``clean``/``static``/``corrupted``: exactly one);
    ``predictor_noise``: the :class:`geo4d.synthetic_predictor.SyntheticNoise` settings the video's
    windows are to be predicted with (recorded, applied by whoever runs the predictor).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="file stem of the video")
    kind: Literal["clean", "cut", "static", "corrupted"]
    seeds: list[int] = Field(min_length=1)
    shot_frames: list[int] = Field(min_length=1)
    fade_frames: int = Field(0, ge=0)
    fade_kind: Literal["black", "cross"] = "black"
    predictor_noise: dict[str, Any] = Field(default_factory=dict)


class ArchiveSpec(Spec):
    """A synthetic archive: its videos, frame size, rate and moving objects per scene."""

    videos: list[ArchiveVideoSpec] = Field(min_length=1)
    height: int = Field(64, ge=2)
    width: int = Field(96, ge=2)
    fps: float = Field(10.0, gt=0)
    n_dynamic: int = Field(3, ge=0)


def build_video(v: ArchiveVideoSpec, a: ArchiveSpec) -> ArchiveVideo:
    """Render video ``v`` of archive ``a`` (frames and exact per-shot geometry)."""
    if v.kind != "cut" and (len(v.seeds) != 1 or len(v.shot_frames) != 1):
        raise InputError(f"archive video {v.name}: kind {v.kind!r} has one shot; got {len(v.seeds)} seeds")
    kw = {"fps": a.fps, "n_dynamic": a.n_dynamic}
    if v.kind == "cut":
        out = cut_video(v.seeds, v.shot_frames, a.height, a.width, v.fade_frames, fade_kind=v.fade_kind, **kw)
    elif v.kind == "static":
        out = static_camera_video(v.seeds[0], v.shot_frames[0], a.height, a.width, **kw)
    else:
        out = clean_video(v.seeds[0], v.shot_frames[0], a.height, a.width, **kw)
    out.meta.update({"name": v.name, "kind": v.kind, "predictor_noise": dict(v.predictor_noise)})
    return out
