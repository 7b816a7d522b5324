"""The pipeline's stages as plain functions over a :class:`storage.store.Store`.

decode → shots → windows → fuse → evaluate. Each stage is resumable: it returns early when the store says
it is complete with the same fingerprint (its parameters plus its upstream stage's fingerprint), and
it writes its record only after all its arrays are complete. Rerunning an upstream stage clears the
records of the stages after it. A video is reconstructed per shot (:mod:`geo4d.shots`): windows
never straddle a cut and each shot is fused on its own; a video without a shots stage (or with one
shot) is processed exactly as before shots existed. No Prefect here: :mod:`tasks` wraps these for orchestration, and a
notebook can call them directly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geo4d import validation
from geo4d.errors import InputError, PredictionError, SettingsChangedError
from geo4d.fusion import FusionConfig, fuse
from geo4d.predictor import WindowPredictor
from geo4d.quality import shot_scores, skipped_scores
from geo4d.shots import (Shot, is_single_shot, join_shot_geometry, shot_segments, shot_window_starts, split_shots,
                         windows_of_shot)
from geo4d.windows import WINDOW_SIZE, WINDOW_STRIDE, VideoTooShortError, window_starts
from geo4d.spec import jsonable
from pipeline.predictors import (Geo4DPredictorSpec, PredictorSpec, frame_rate_condition, parse_predictor_spec,
                                 prediction_parameters, predictor_from_spec)
from pipeline.resident import device_slot, resident_predictor
from pipeline.shots import ShotSettings, detect_boundaries, detector_version
from storage.store import STAGES, Store, VideoInfo, stage_fingerprint, video_id_for

__all__ = ["StageResult", "decode_stage", "shots_stage", "windows_stage", "fuse_stage", "evaluate_stage",
           "check_settings", "Progress"]

Progress = Callable[[int, int, str], None]


@dataclass
class StageResult:
    video_id: str
    stage: str
    skipped: bool
    fingerprint: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def _downstream(stage: str) -> list[str]:
    return list(STAGES[STAGES.index(stage) + 1 :])


_ABSENT = object()  # a parameter one of two documents does not have (a setting added or removed since)


def _first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first parameter (dotted path) whose value differs between two parameter documents
    (:data:`_ABSENT` for the side that lacks it)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key, _ABSENT), new.get(key, _ABSENT),
                                      f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if old == new else (path or "parameters", old, new)


def _what_differs(old: dict, new: dict) -> str:
    """``name=old; this run asks new`` for the first differing parameter (the settings-changed lines)."""
    diff = _first_difference(old, jsonable(new))
    if not diff:
        return "other settings"
    name, was, asks = diff
    if was is _ABSENT:
        return f"no {name} setting (from before it existed); this run asks {asks!r}"
    if asks is _ABSENT:
        return f"{name}={was!r}; this run has no such setting"
    return f"{name}={was!r}; this run asks {asks!r}"


def check_settings(store: Store, video_id: str, stage: str, parameters: dict, fingerprint: str,
                   overwrite: bool = False) -> None:
    """Refuse to replace a finished stage made with other settings, unless ``overwrite``.

    Raises:
        SettingsChangedError: naming the first differing parameter and its two values.
    """
    rec = store.stage_record(video_id, stage) if store.has_video(video_id) else None
    if overwrite or not rec or rec.get("status") != "complete" or rec.get("fingerprint") == fingerprint:
        return
    what = _what_differs(rec.get("parameters") or {}, parameters)
    raise SettingsChangedError(
        f"video {video_id}: stage {stage!r} was finished with {what} — nothing changed; "
        "rerun with --overwrite (overwrite=True) to recompute it and the stages after it"
    )


def _upstream_fp(store: Store, video_id: str, stage: str) -> str:
    rec = store.stage_record(video_id, stage)
    if not rec or rec.get("status") != "complete":
        raise InputError(f"video {video_id}: stage {stage!r} is not complete; run it first")
    return str(rec.get("fingerprint"))


# ---- decode ----------------------------------------------------------------------------------------
def decode_stage(
    store: Store,
    video_path: str,
    *,
    video_id: str | None = None,
    size: tuple[int, int] | None = None,
    resize: str = "crop",
    frame_stride: int = 1,
    min_frames: int = WINDOW_SIZE,
    run_id: str | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> StageResult:
    """Decode ``video_path`` (PyAV) upright, bring it to ``size`` (H, W) by ``resize`` if given, store ``frames``.

    ``resize`` (:mod:`geo4d.framing`): ``crop`` (default) and ``pad`` keep square pixels, ``stretch``
    is the official demo's. The framing, the source size and rotation, and each frame's
    presentation time (``frames_pts``) are stored; ``fps`` is the real average rate of the kept frames.
    Frames stream into the store block by block (:func:`geo4d.video.stream_video`), so memory does
    not grow with the video's length. They are staged and become ``frames`` only once the whole
    video has decoded: a missing, unreadable, truncated or too short video raises
    :class:`InputError` and leaves the store as it was. A finished decode of other settings (e.g.
    another size) is kept unless ``overwrite`` (:func:`check_settings`).
    """
    from geo4d.video import decode_framing, stream_video

    path = _readable(video_path)
    vid = video_id or video_id_for(path)
    params = {"source": str(path.resolve()), "size": list(size) if size else None, "resize": resize,
              "frame_stride": frame_stride, "content_id": vid}
    fp = stage_fingerprint(params)
    if store.has_video(vid) and store.is_complete(vid, "decode", fp):
        info = store.video_info(vid)
        return StageResult(vid, "decode", True, fp, details={"n_frames": info.n_frames})
    check_settings(store, vid, "decode", params, fp, overwrite)
    t0 = time.perf_counter()
    meta, blocks = stream_video(path, size=size, stride=frame_stride, resize=resize,
                                progress=(lambda k, n: progress(k, n, "decoding")) if progress else None)
    framing = decode_framing(meta, size, resize)
    T, times = _stage_frames(store, vid, path, meta, blocks, frame_stride, min_frames, framing)
    dt = time.perf_counter() - t0
    store.record_stage(vid, "decode", "complete", parameters=params, run_id=run_id, seconds=dt,
                       extra={"codec": meta.codec, "source_fps": meta.fps, "rotation": meta.rotation,
                              "source_size": list(meta.upright_size), "coded_size": [meta.height, meta.width]})
    H, W = framing.size
    return StageResult(vid, "decode", False, fp, dt, {"n_frames": T, "height": H, "width": W})


def _readable(video_path: str) -> Path:
    path = Path(video_path)
    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    return path


def _stage_frames(store: Store, vid: str, path: Path, meta, blocks, frame_stride: int, min_frames: int,
                  framing) -> tuple[int, np.ndarray]:
    """Stream the blocks into the store's staging array, then commit them (or discard on any error)."""
    from geo4d.video import average_rate

    fps = meta.fps / frame_stride if meta.fps else 0.0
    T, times = 0, []
    try:
        for block in blocks:
            store.write_frames(vid, T, block.frames, source=str(path.resolve()), fps=fps,
                               capacity=meta.n_frames // frame_stride + 1)
            T += len(block.frames)
            times.append(block.times)
        if T < min_frames:
            raise VideoTooShortError(f"{path}: {T} frames after stride {frame_stride}, fewer than one window of {min_frames}")
        pts = np.concatenate(times)
        H, W = framing.size
        # Only now are the frames known complete: earlier frames and records are replaced here.
        store.commit_frames(VideoInfo(vid, str(path.resolve()), T, H, W, average_rate(pts) or fps),
                            ["decode"] + _downstream("decode"), times=pts, framing=framing)
    except BaseException:
        store.discard_frames(vid)
        raise
    return T, pts


# ---- shots -----------------------------------------------------------------------------------------
def shots_stage(
    store: Store,
    video_id: str,
    *,
    shots: ShotSettings | dict | None = None,
    window_size: int = WINDOW_SIZE,
    run_id: str | None = None,
    overwrite: bool = False,
) -> StageResult:
    """Find the video's shots (hard cuts and fades, :mod:`pipeline.shots`) and store them.

    Shots shorter than ``window_size`` frames are recorded as skipped with the reason. With
    ``shots={"detector": "off"}`` the video is one shot. ``details``: ``shots``, ``skipped``,
    ``boundaries`` ([frame, kind]). Raises :class:`InputError` when no shot is one window long.
    """
    settings = ShotSettings.parse(shots, what="shots")
    info = store.video_info(video_id)
    params = {"shots": settings.fingerprint_dict(), "window_size": window_size,
              "upstream": _upstream_fp(store, video_id, "decode")}
    fp = stage_fingerprint(params)
    if store.is_complete(video_id, "shots", fp):
        found = store.read_shots(video_id)
        return StageResult(video_id, "shots", True, fp, details=_shot_details(found, []))
    check_settings(store, video_id, "shots", params, fp, overwrite)
    t0 = time.perf_counter()
    boundaries = detect_boundaries(_frame_blocks(store, video_id, info.n_frames), info.fps, settings)
    found = split_shots(boundaries, info.n_frames, window_size)
    if all(s.skipped for s in found):
        msg = f"video {video_id}: no shot is at least one window ({window_size} frames) long: {_shot_list(found)}"
        store.record_stage(video_id, "shots", "failed", run_id=run_id, error=msg)
        raise InputError(msg)
    store.write_shots(video_id, found, boundaries)
    dt = time.perf_counter() - t0
    details = _shot_details(found, boundaries)
    version = detector_version() if settings.detector != "off" else "off"
    store.record_stage(video_id, "shots", "complete", parameters=params, run_id=run_id, seconds=dt,
                       extra={"detector": version, **details})
    return StageResult(video_id, "shots", False, fp, dt, details)


def _frame_blocks(store: Store, video_id: str, n_frames: int, block: int = 64):
    """The stored frames, ``block`` at a time (memory flat in the video's length)."""
    frames = store.frames_array(video_id)
    for a in range(0, n_frames, block):
        yield np.asarray(frames[a:a + block])


def _shot_list(shots: list[Shot]) -> str:
    return ", ".join(f"{s.start}–{s.end - 1}" + (f" (skipped: {s.skipped})" if s.skipped else "") for s in shots)


def _shot_details(shots: list[Shot], boundaries: list) -> dict[str, Any]:
    return {"shots": len(shots), "skipped": sum(1 for s in shots if s.skipped),
            "boundaries": [[int(f), k] for f, k in boundaries],
            "skipped_shots": [{"shot": s.index, "start": s.start, "end": s.end, "reason": s.skipped}
                              for s in shots if s.skipped]}


def _window_layout(store: Store, video_id: str, n_frames: int, window_size: int,
                   stride: int) -> tuple[list[int], list[list[int]] | None]:
    """Window starts laid inside the video's shots, and the shot spans they depend on (None for a
    video of one shot: its windows are today's)."""
    shots = store.read_shots(video_id)
    if is_single_shot(shots, n_frames):
        return window_starts(n_frames, window_size, stride), None
    return shot_window_starts(shots, window_size, stride), shot_segments(shots)


# ---- windows ---------------------------------------------------------------------------------------
def windows_stage(
    store: Store,
    video_id: str,
    predictor: WindowPredictor | PredictorSpec | dict,
    *,
    window_size: int = WINDOW_SIZE,
    stride: int = WINDOW_STRIDE,
    run_id: str | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    lease=None,
) -> StageResult:
    """Predict every window not yet stored; each window's data is written, then its done marker.

    ``predictor`` is a predictor object or a spec. A geo4d spec's network is resident
    (:mod:`pipeline.resident`): loaded once per process and device, and only when a window is
    missing; ``details["network_load"]`` says when this call loaded it. Settings that differ from
    a finished stage (or from windows already stored) stop the stage unless ``overwrite``. With a
    :class:`storage.leases.VideoLease`, every window write first checks the lease is still held.
    """
    info = store.video_info(video_id)
    spec = None if isinstance(predictor, WindowPredictor) else parse_predictor_spec(predictor)
    starts, segments = _window_layout(store, video_id, info.n_frames, window_size, stride)
    with _sampling_device(spec) as device:
        if spec is None:
            identity = predictor.parameters()
        else:
            identity = prediction_parameters(spec, fps=info.fps, device=device)
        params = {"predictor": identity, "window_size": window_size, "stride": stride,
                  "upstream": _upstream_fp(store, video_id, "decode")}
        if segments is not None:
            params["shots"] = segments
        fp = stage_fingerprint(params)
        if store.is_complete(video_id, "windows", fp):
            return StageResult(video_id, "windows", True, fp, details={"windows": len(starts), "predicted": 0})
        check_settings(store, video_id, "windows", params, fp, overwrite)
        _check_partial_windows(store, video_id, params, fp, overwrite)
        t0 = time.perf_counter()
        store.clear_stages(video_id, ["windows"] + _downstream("windows"))
        done = store.prepare_windows(video_id, starts, window_size, stride, _predictor_name(predictor, spec), fp,
                                     parameters=jsonable(params), pointmap_z_offset=_z_offset(predictor, spec))
        todo = [g for g in range(len(starts)) if not done[g]]
        details: dict[str, Any] = {"windows": len(starts), "network_load": None}
        if todo:
            if progress:
                progress(len(starts) - len(todo), len(starts), f"{len(todo)} to sample: preparing the predictor")
            predictor, load = _obtain(predictor, spec, info, device, starts)
            details["network_load"] = load.__dict__ if load else None
            if load and progress:
                progress(len(starts) - len(todo), len(starts), load.message)
        summaries = _sample(store, video_id, predictor, starts, todo, window_size, progress, lease)
    details["predicted"] = len(summaries)
    _summaries_of_stored(store, video_id, starts, summaries)
    _checked(store, video_id, "windows", run_id,
             lambda: validation.validate_window_summaries([r for g in sorted(summaries) for r in summaries[g]]))
    dt = time.perf_counter() - t0
    store.record_stage(video_id, "windows", "complete", parameters=params, run_id=run_id, seconds=dt,
                       extra={"windows": len(starts), "predicted": details["predicted"],
                              "predictor": _predictor_name(predictor, spec)})
    return StageResult(video_id, "windows", False, fp, dt, details)


@contextmanager
def _sampling_device(spec: PredictorSpec | None):
    """A device slot for a geo4d spec (:func:`pipeline.resident.device_slot`); nothing otherwise."""
    if isinstance(spec, Geo4DPredictorSpec):
        with device_slot(spec) as device:
            yield device
    else:
        yield None


def _predictor_name(predictor, spec: PredictorSpec | None) -> str:
    if spec is None:
        return predictor.name
    return "geo4d" if isinstance(spec, Geo4DPredictorSpec) else "synthetic (test instrument)"


def _z_offset(predictor, spec: PredictorSpec | None) -> bool:
    """Whether the predictor's point maps carry an unknown z offset (the network's do), without building it."""
    if spec is None:
        return bool(predictor.pointmap_z_offset)
    return isinstance(spec, Geo4DPredictorSpec) or bool(spec.noise.pointmap_z_offset)


def _obtain(predictor, spec: PredictorSpec | None, info: VideoInfo, device: str | None, starts: list[int]):
    """The predictor object to sample with, and the :class:`NetworkLoad` if one happened (a synthetic
    spec's instrument is told the video's window ``starts``: its corrupted windows are among them)."""
    if spec is None:
        return predictor, None
    if isinstance(spec, Geo4DPredictorSpec):
        resident, load = resident_predictor(spec, device)
        return resident.with_fs(frame_rate_condition(spec, info.fps)), load
    return predictor_from_spec(spec, video_path=info.source, starts=starts), None


def _check_partial_windows(store: Store, video_id: str, params: dict, fp: str, overwrite: bool) -> None:
    """Windows stored by an interrupted run of other settings are kept unless ``overwrite``."""
    old = store.windows_progress(video_id)
    if overwrite or old is None or old["fingerprint"] == fp or not old["done"]:
        return
    if (old.get("parameters") or {}).get("upstream") != params["upstream"]:
        return  # windows of an earlier decode of this video: invalid whatever the settings
    what = _what_differs(old.get("parameters") or {}, params)
    raise SettingsChangedError(
        f"video {video_id}: {old['done']} window(s) were sampled with {what} — nothing changed; "
        "rerun with --overwrite (overwrite=True) to discard them"
    )


def _sample(store: Store, video_id: str, predictor: WindowPredictor, starts: list[int], todo: list[int],
            window_size: int, progress: Progress | None, lease=None) -> dict[int, list[dict]]:
    """Predict the windows ``todo`` and store each; returns per-window summaries (by window index).

    Out of accelerator memory: fewer windows per call, and only the missing windows are resumed.
    """
    summaries: dict[int, list[dict]] = {}
    while todo:
        todo_starts = [starts[g] for g in todo]
        try:
            for k, pred in predictor.predict_windows(store.read_frames(video_id), todo_starts, window_size):
                g = todo[k]
                _check_finite(pred, g, starts[g], window_size)
                if lease is not None:
                    lease.check()  # a writer whose lease was taken over stops here
                store.write_window(video_id, g, pred)
                summaries[g] = validation.window_summary(pred.as_dict(), g, starts[g])
                if progress:
                    progress(len(starts) - len(todo) + len(summaries), len(starts),
                             f"window {g} (frames {starts[g]}–{starts[g] + window_size - 1})")
            todo = []
        except Exception as exc:
            batch = getattr(predictor, "window_batch", None)
            if not _is_out_of_memory(exc) or not isinstance(batch, int) or batch <= 1:
                raise
            predictor.window_batch = batch // 2
            _free_accelerator_memory()
            if progress:
                progress(len(starts) - len(todo) + len(summaries), len(starts),
                         f"out of memory: retrying with {batch // 2} windows per call")
            todo = [g for g in todo if g not in summaries]
    return summaries


def _summaries_of_stored(store: Store, video_id: str, starts: list[int], summaries: dict[int, list[dict]]) -> None:
    """Add the summaries of windows stored by an earlier, interrupted run (validation needs all)."""
    if len(summaries) < len(starts):
        arrays, _, _ = store.windows(video_id)
        for g in range(len(starts)):
            if g not in summaries:
                summaries[g] = validation.window_summary({k: a[g] for k, a in arrays.items()}, g, starts[g])


def _is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _checked(store: Store, video_id: str, stage: str, run_id: str | None, check) -> None:
    """Run a data check; on failure record the stage failed with the expectation's message, re-raise."""
    try:
        check()
    except validation.ValidationError as exc:
        store.record_stage(video_id, stage, "failed", run_id=run_id, error=str(exc))
        raise


def _check_finite(pred, g: int, start: int, size: int) -> None:
    for name, arr in pred.as_dict().items():
        if not np.isfinite(arr).all():
            raise PredictionError(
                f"windows/{name}: window {g} (frames {start}–{start + size - 1}) contains NaN or inf"
            )


# ---- fuse ------------------------------------------------------------------------------------------
def fuse_stage(
    store: Store,
    video_id: str,
    *,
    fusion: FusionConfig | dict | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    require_upstream: bool = True,
    overwrite: bool = False,
    intrinsics: Sequence[float] | None = None,
) -> StageResult:
    """Fuse the stored windows into per-frame geometry (``fused/``, with ``fused/depth_source``: which
    modality gave each pixel its depth).

    ``intrinsics`` ``(fx, fy, cx, cy)`` in source pixels (a calibrated camera) fixes K, converted to
    the stored frames' pixels by the video's framing (:mod:`geo4d.framing`). Padded pixels (resize
    ``pad``) carry no weight and come out invalid. With ``require_upstream=False`` (``geo4d fuse``), the windows need not carry this program's
    stage records: any store following docs/store.md works. A finished fusion of other settings is
    kept unless ``overwrite``.
    """
    info = store.video_info(video_id)
    arrays, starts, V = store.windows(video_id)
    upstream = store.stage_record(video_id, "windows") or {}
    if require_upstream and upstream.get("status") != "complete":
        raise InputError(f"video {video_id}: stage 'windows' is not complete; run it first")
    framing = store.framing(video_id)
    config = _with_known_intrinsics(FusionConfig.parse(fusion, what="fusion"), intrinsics, framing)
    if config.pointmap_z_offset is None:  # as the windows' predictor says
        config = config.model_copy(update={"pointmap_z_offset": store.windows_pointmap_z_offset(video_id)})
    shots = store.read_shots(video_id)
    single = is_single_shot(shots, info.n_frames)
    params = {"fusion": config.fingerprint_dict(), "upstream": upstream.get("fingerprint"), "starts": starts}
    if not single:
        params["shots"] = shot_segments(shots)
    fp = stage_fingerprint(params)
    if store.is_complete(video_id, "fuse", fp):
        return StageResult(video_id, "fuse", True, fp)
    check_settings(store, video_id, "fuse", params, fp, overwrite)
    t0 = time.perf_counter()
    store.clear_stages(video_id, ["fuse"] + _downstream("fuse"))
    windows = _masked(arrays, framing)
    if single:
        result = fuse(windows, starts, info.n_frames, config=config, progress=progress)
        _checked(store, video_id, "fuse", run_id,
                 lambda: validation.validate_fused(result.geometry, info.height, info.width))
        scores = [shot_scores(shots[0], windows, starts, result.geometry, result.depth_source,
                              result.diagnostics, True)]
    else:
        result, scores = _fuse_shots(store, video_id, run_id, windows, starts, V, shots, config, progress)
    store.write_fused(video_id, result.geometry, diagnostics=result.diagnostics,
                      intrinsics_source=framing.intrinsics_to_source(result.geometry.intrinsics),
                      depth_source=result.depth_source,
                      shot_index=np.array([_shot_of(shots, scores, t) for t in range(info.n_frames)], np.int16))
    store.write_shot_scores(video_id, scores)
    dt = time.perf_counter() - t0
    store.record_stage(video_id, "fuse", "complete", parameters=params, run_id=run_id, seconds=dt,
                       extra={"shots": len(shots), "shots_fused": sum(1 for r in scores if r["skipped"] is None)})
    return StageResult(video_id, "fuse", False, fp, dt, {"shots": len(shots)})


def _shot_of(shots: list[Shot], scores: list[dict], t: int) -> int:
    """Frame ``t``'s shot index for ``fused/shot``, −1 when its shot was not reconstructed."""
    for s, r in zip(shots, scores):
        if s.start <= t < s.end:
            return s.index if r["skipped"] is None else -1
    return -1


@dataclass
class _ShotWindows:
    """The windows ``index`` of one stored array, read lazily (``view[g]`` is ``array[index[g]]``)."""

    array: Any
    index: list[int]

    @property
    def shape(self):
        return (len(self.index),) + tuple(self.array.shape[1:])

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, g):
        return self.array[self.index[g]]


def _fuse_shots(store: Store, video_id: str, run_id: str | None, windows: dict, starts: list[int], V: int,
                shots: list[Shot], config: FusionConfig, progress: Progress | None):
    """Fuse each reconstructed shot on its own (its windows, its frames, its world frame and scale),
    check and score it; join them (:func:`geo4d.shots.join_shot_geometry`). A shot failing its data
    checks is kept with ``data_checks`` False; the stage fails only when every shot fails them."""
    from geo4d.fusion import FusionResult

    info = store.video_info(video_id)
    parts, scores, diags, failures = [], [], [], []
    for shot in shots:
        if shot.skipped:
            scores.append(skipped_scores(shot))
            continue
        idx = windows_of_shot(starts, shot, V)
        view = {name: _ShotWindows(arr, idx) for name, arr in windows.items()}
        local = [starts[g] - shot.start for g in idx]
        res = fuse(view, local, shot.n_frames, config=config, progress=progress)
        ok = _passes_checks(res.geometry, info, failures, shot)
        parts.append((shot, res.geometry, res.depth_source))
        scores.append(shot_scores(shot, view, local, res.geometry, res.depth_source, res.diagnostics, ok))
        diags.append((shot, idx, res.diagnostics))
    if len(failures) == len(parts):
        store.record_stage(video_id, "fuse", "failed", run_id=run_id, error="; ".join(failures))
        raise validation.ValidationError("; ".join(failures))
    geometry, source = join_shot_geometry(parts, info.n_frames, info.height, info.width)
    return FusionResult(geometry, diagnostics=_joined_diagnostics(diags), depth_source=source), scores


def _passes_checks(geometry, info: VideoInfo, failures: list[str], shot: Shot) -> bool:
    """Whether one shot's fused geometry passes the data checks (a failure's message is collected)."""
    try:
        validation.validate_fused(geometry, info.height, info.width)
        return True
    except validation.ValidationError as exc:
        failures.append(f"shot {shot.index} (frames {shot.start}–{shot.end - 1}): {exc}")
        return False


def _joined_diagnostics(diags: list[tuple[Shot, list[int], dict]]) -> dict:
    """One diagnostics record of a multi-shot fusion: the first shot's, with every shot's windows
    (video window indices and frames) and flags, and ``shots``: each shot's gauge, intrinsics, solver."""
    first = dict(diags[0][2])
    first["windows"], first["flagged_windows"], first["flagged_starts"] = [], [], []
    first["shots"] = []
    for shot, idx, d in diags:
        for w in d.get("windows") or []:
            first["windows"].append({**w, "index": idx[w["index"]], "start": w["start"] + shot.start})
        first["flagged_windows"] += [idx[g] for g in d.get("flagged_windows") or []]
        first["flagged_starts"] += [s + shot.start for s in d.get("flagged_starts") or []]
        first["shots"].append({"shot": shot.index, "start": shot.start, "end": shot.end,
                               **{k: d.get(k) for k in ("gauge", "intrinsics", "solver")}})
    return first


def _with_known_intrinsics(config: FusionConfig, intrinsics: Sequence[float] | None, framing) -> FusionConfig:
    """``config`` with K fixed at ``intrinsics`` (source pixels) converted to network pixels."""
    if intrinsics is None:
        return config
    if len(intrinsics) != 4 or not all(np.isfinite(v) for v in intrinsics) or min(intrinsics[:2]) <= 0:
        raise InputError(f"intrinsics {list(intrinsics)}: expected fx,fy,cx,cy in source pixels with fx, fy > 0")
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    K = framing.intrinsics_to_network(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]))
    return config.model_copy(update={"intrinsics": (K[0, 0], K[1, 1], K[0, 2], K[1, 2])})


class _MaskedWindows(dict):
    """The stored windows with padding (framing ``pad``) given no weight: ``pointmap_conf`` and
    ``disparity`` are 0 there (0 disparity means no depth), and so is ``ray_dir`` (a zero direction
    is no ray: the padded pixels take no part in the ray cameras), read lazily one window at a time."""

    def __init__(self, arrays: dict, mask: np.ndarray):
        super().__init__(arrays)
        for name in ("pointmap_conf", "disparity", "ray_dir"):
            if name in arrays:
                self[name] = _MaskedArray(arrays[name], mask)


@dataclass
class _MaskedArray:
    array: Any
    mask: np.ndarray  # (H, W) bool

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, key):
        channels = len(self.array.shape) == 5  # (G, V, H, W, 3): the mask broadcasts over the last axis
        mask = self.mask[..., None] if channels else self.mask
        return np.where(mask, self.array[key], 0).astype(self.array.dtype)


def _masked(arrays: dict, framing) -> dict:
    mask = framing.valid_mask()
    return arrays if mask.all() else _MaskedWindows(arrays, mask)


# ---- evaluate --------------------------------------------------------------------------------------
def evaluate_stage(
    store: Store,
    video_id: str,
    *,
    ground_truth: str | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
) -> StageResult:
    """Compare fused geometry with ground truth (when there is any) and record the metrics.

    Ground truth defaults to the ``<video>.gt`` directory beside the source video (synthetic scenes).
    Without ground truth the stage completes with no metrics.
    """
    from storage.ground_truth import find_ground_truth

    info = store.video_info(video_id)
    gt_dir = ground_truth or find_ground_truth(info.source)
    params = {"ground_truth": str(gt_dir) if gt_dir else None, "upstream": _upstream_fp(store, video_id, "fuse")}
    fp = stage_fingerprint(params)
    if store.is_complete(video_id, "evaluate", fp):
        rec = store.stage_record(video_id, "evaluate") or {}
        return StageResult(video_id, "evaluate", True, fp, details={"metrics": rec.get("metrics")})
    check_settings(store, video_id, "evaluate", params, fp, overwrite)
    t0 = time.perf_counter()
    metrics: dict[str, float] | None = None
    extra: dict[str, Any] = {}
    if gt_dir is not None:
        metrics, extra = _evaluate(store, video_id, gt_dir)
        _checked(store, video_id, "evaluate", run_id, lambda: validation.validate_metrics(metrics))
    dt = time.perf_counter() - t0
    store.record_stage(video_id, "evaluate", "complete", parameters=params, run_id=run_id, seconds=dt,
                       extra={"metrics": metrics, **extra})
    return StageResult(video_id, "evaluate", False, fp, dt, {"metrics": metrics})


def _evaluate(store: Store, video_id: str, gt_dir) -> tuple[dict[str, float], dict[str, Any]]:
    """The video's metrics against ground truth, and the record's extras. A video of several shots
    is evaluated per shot (each in its own world frame and scale: its own alignment to the ground
    truth); its metrics are the frame-weighted means over the reconstructed shots (``shot_metrics``:
    each shot's)."""
    from storage.ground_truth import read_ground_truth

    fused = store.read_fused(video_id)
    gt, extra = _ground_truth_like(store, video_id, read_ground_truth(gt_dir), fused.depth.shape, gt_dir)
    shots = store.read_shots(video_id)
    if is_single_shot(shots, fused.depth.shape[0]):
        metrics = _shot_metrics(fused, gt, slice(None))
    else:
        per = [(s, _shot_metrics(fused, gt, slice(s.start, s.end))) for s in shots if s.skipped is None]
        n = sum(s.n_frames for s, _ in per)
        metrics = {k: sum(m[k] * s.n_frames for s, m in per) / n for k in per[0][1]}
        extra["shot_metrics"] = [{"shot": s.index, "start": s.start, "end": s.end, "metrics": m} for s, m in per]
    if ((fused.meta.get("diagnostics") or {}).get("intrinsics") or {}).get("given"):
        metrics.pop("focal_err_pct", None)  # K was given, not estimated: there is no focal error to measure
        for row in extra.get("shot_metrics", []):
            row["metrics"].pop("focal_err_pct", None)
        extra["intrinsics"] = "given (--intrinsics): fixed in the fusion, focal error not measured"
    return metrics, extra


def _ground_truth_like(store: Store, video_id: str, gt, shape: tuple[int, ...], gt_dir) -> tuple[Any, dict]:
    """The ground truth in the reconstruction's pixels: as it is, or — when it has the source video's
    size and the network ran at another — brought to the network's pixels through the video's framing
    (depth nearest-neighbour, no value invented, padding invalid; K by the framing's affine map), so
    the metrics compare exactly what was reconstructed."""
    from geo4d.framing import nearest_to_network
    from geo4d.geometry import Geometry

    if gt.depth.shape == tuple(shape):
        return gt, {}
    framing = store.framing(video_id)
    if gt.depth.shape != (shape[0], *framing.source_size):
        raise InputError(f"{gt_dir}: ground-truth depth {gt.depth.shape} matches neither the reconstruction "
                         f"{tuple(shape)} nor the source video ({shape[0]}, {framing.source_size[0]}, "
                         f"{framing.source_size[1]})")
    depth = nearest_to_network(np.where(gt.valid, gt.depth, np.inf).astype(np.float32), framing, fill=np.inf)
    valid = np.isfinite(depth)
    resampled = Geometry(np.where(valid, depth, np.inf), valid, framing.intrinsics_to_network(gt.intrinsics),
                         gt.world_from_cam, meta=gt.meta)
    return resampled, {"ground_truth": f"resampled from {framing.source_size[0]}×{framing.source_size[1]} to the "
                                       f"network's {shape[1]}×{shape[2]} pixels ({framing.mode})"}


def _shot_metrics(fused, gt, frames: slice) -> dict[str, float]:
    """:func:`geo4d.metrics.reconstruction_metrics` over ``frames`` (a shot) of the video."""
    from geo4d.metrics import reconstruction_metrics

    return {k: float(v) for k, v in reconstruction_metrics(
        fused.depth[frames], fused.intrinsics[frames], fused.world_from_cam[frames],
        gt.depth[frames], gt.intrinsics[frames], gt.world_from_cam[frames],
    ).items()}
