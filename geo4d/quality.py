"""Quality scores of one fused shot: is this reconstruction good enough to train on? (docs/curation.md)

Every score is computed from the fusion's inputs (the shot's windows) and its result (the fused
geometry, its diagnostics and ``depth_source``) on a regular sample of about
:data:`SAMPLES_PER_FRAME` pixels per frame, so it costs a small fraction of the fusion:

============================  =====================================================================  ==========
score                         definition                                                             range
============================  =====================================================================  ==========
``window_agreement``          median over (window, frame) of the median ``|s R P + t − X| / z``:      ≥ 0, 0 best
                              each window's point map ``P`` aligned (Umeyama similarity) to the
                              fused world points ``X`` (the consensus of the overlapping windows),
                              relative to the fused depth ``z``
``worst_window_agreement``    the largest of those per-(window, frame) medians: the worst window's   ≥ 0, 0 best
                              worst frame (a few bad windows, or one bad frame of a rigidly wrong
                              window, that the median over all hides)
``confident_fraction``        fraction of the shot's pixels with a fused depth (confidence > 0)      0–1
``flagged_windows``           fraction of the shot's windows the robust weights down-weighted        0–1, 0 best
                              (relative to the shot's own residual spread: see docs/curation.md)
``rotation_deg``              total camera rotation: Σ of the angles between consecutive frames       ≥ 0 degrees
``translation_rel``           camera path length / median fused depth of the shot                   ≥ 0
``smoothness``                median ‖c_{t+1} − 2 c_t + c_{t−1}‖ / median ‖c_{t+1} − c_t‖            ≥ 0, 0 best
                              (acceleration relative to speed; 0 when the camera does not move)
``focal_stability``           std / mean of the focal length fx over the shot's frames              ≥ 0, 0 best
``dynamic_fraction``          fraction of confident sampled pixels whose world point, seen from the  0–1
                              next frame, misses that frame's depth by > 10 % (moving objects;
                              occlusion edges count too)
``sky_fraction``              fraction of pixels no modality gave a depth (``depth_source`` 0: sky,  0–1
                              or nothing trustworthy)
``data_checks``               the fused-geometry data checks (:func:`geo4d.validation.validate_fused`) bool
                              passed for the shot
============================  =====================================================================  ==========

A shot too short to reconstruct gets every score None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geo4d.align import umeyama
from geo4d.cameras import rotation_angle_deg
from geo4d.fusion.window_cameras import sample_pixels
from geo4d.geometry import Geometry
from geo4d.shots import Shot

__all__ = ["SCORE_NAMES", "SAMPLES_PER_FRAME", "shot_scores", "skipped_scores", "window_agreement",
           "window_frame_residuals", "worst_window", "camera_motion", "smoothness", "focal_stability",
           "dynamic_fraction"]

#: The score names, in the order of docs/curation.md (export index and manifest columns).
SCORE_NAMES = ("window_agreement", "worst_window_agreement", "confident_fraction", "flagged_windows", "rotation_deg",
               "translation_rel", "smoothness", "focal_stability", "dynamic_fraction", "sky_fraction", "data_checks")
#: Pixels sampled per frame for the scores that work on samples.
SAMPLES_PER_FRAME = 256
_DYNAMIC_REL = 0.10  # relative depth miss that counts a pixel as moving


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def window_frame_residuals(pointmap: Any, conf: Any, starts: Sequence[int], points: np.ndarray, depth: np.ndarray,
                           valid: np.ndarray, n: int = SAMPLES_PER_FRAME) -> list[list[float]]:
    """Per window, per frame: the median relative residual ``|s R P + t − X| / z`` of that window's
    point map after its own alignment to the fused points (module table).

    Each window ``g`` is aligned with one Umeyama similarity ``(s, R, t)`` (weighted by confidence)
    over all its frames' sampled pixels; the residual of frame ``k`` is the median over its
    confident sampled pixels. Windows with fewer than 8 usable samples give an empty list.

    Args:
        pointmap: (G, V, H, W, 3) window point maps (``pointmap[g]`` read one window at a time).
        conf: (G, V, H, W) their confidences.
        starts: (G,) window starts in the shot's frames.
        points, depth, valid: the shot's fused (T, H, W, 3) world points, (T, H, W) depth and validity.

    Returns:
        G lists of up to V floats (frames without a usable sample left out).
    """
    T, H, W = depth.shape
    flat, _ = sample_pixels(H, W, n)
    out: list[list[float]] = []
    for g, s in enumerate(starts):
        P = np.asarray(pointmap[g], dtype=np.float64).reshape(-1, H * W, 3)[:, flat]
        c = np.asarray(conf[g], dtype=np.float64).reshape(-1, H * W)[:, flat]
        V = P.shape[0]
        X = points[s:s + V].reshape(V, H * W, 3)[:, flat].astype(np.float64)
        z = depth[s:s + V].reshape(V, H * W)[:, flat].astype(np.float64)
        ok = (c > 0) & valid[s:s + V].reshape(V, H * W)[:, flat] & (z > 0)
        if ok.sum() < 8:
            out.append([])
            continue
        sc, R, t = umeyama(P[ok], X[ok], weights=c[ok])
        res = np.linalg.norm(sc * P @ R.T + t - X, axis=-1) / np.where(z > 0, z, 1.0)
        out.append([float(np.median(res[k][ok[k]])) for k in range(V) if ok[k].any()])
    return out


def window_agreement(pointmap: Any, conf: Any, starts: Sequence[int], points: np.ndarray, depth: np.ndarray,
                     valid: np.ndarray, n: int = SAMPLES_PER_FRAME) -> float | None:
    """Median over (window, frame) of :func:`window_frame_residuals` (see module table); None when
    no window could be aligned."""
    medians = [r for w in window_frame_residuals(pointmap, conf, starts, points, depth, valid, n) for r in w]
    return float(np.median(medians)) if medians else None


def worst_window(residuals: Sequence[Sequence[float]]) -> float | None:
    """``worst_window_agreement``: the largest per-frame residual of :func:`window_frame_residuals`
    over every window — the worst window's worst frame (None without any).

    The median over every (window, frame) (``window_agreement``) hides a few bad windows; this sees
    the worst one, and a window spoiled in a single frame (a rigidly wrong window whose first frame
    alone disagrees, which its alignment cannot absorb) counts. Each value is already a median over
    the frame's sampled pixels, so a few bad pixels do not move it.

    >>> worst_window([[0.01, 0.01, 0.02], [0.01, 0.3, 0.01], []])
    0.3
    """
    per = [max(w) for w in residuals if len(w)]
    return float(max(per)) if per else None


def camera_motion(world_from_cam: np.ndarray, depth: np.ndarray, valid: np.ndarray) -> tuple[float, float | None]:
    """``(rotation_deg, translation_rel)``: Σ consecutive rotation angles, and the camera path length
    over the median valid depth (None without a valid pixel)."""
    R = world_from_cam[:, :3, :3]
    rel = np.matmul(np.swapaxes(R[:-1], 1, 2), R[1:])
    rotation = float(rotation_angle_deg(rel).sum()) if len(R) > 1 else 0.0
    c = world_from_cam[:, :3, 3]
    path = float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum())
    d = depth[valid]
    med = float(np.median(d)) if d.size else 0.0
    return rotation, (path / med if med > 0 else None)


def smoothness(world_from_cam: np.ndarray) -> float:
    """Median camera-centre acceleration ‖c_{t+1} − 2c_t + c_{t−1}‖ over the median speed
    ‖c_{t+1} − c_t‖ (per frame); 0 for a camera that does not move (or fewer than 3 frames)."""
    c = world_from_cam[:, :3, 3]
    if len(c) < 3:
        return 0.0
    speed = float(np.median(np.linalg.norm(np.diff(c, axis=0), axis=1)))
    acc = float(np.median(np.linalg.norm(c[2:] - 2 * c[1:-1] + c[:-2], axis=1)))
    scale = float(np.max(np.abs(c))) + 1.0
    return acc / speed if speed > 1e-9 * scale else 0.0


def focal_stability(intrinsics: np.ndarray) -> float:
    """Relative standard deviation std(fx) / mean(fx) over the frames."""
    fx = np.asarray(intrinsics, dtype=np.float64)[:, 0, 0]
    return float(np.std(fx) / np.mean(fx)) if np.mean(fx) > 0 else 0.0


def dynamic_fraction(geometry: Geometry, n: int = SAMPLES_PER_FRAME) -> float | None:
    """Fraction of sampled confident pixels of frame t whose world point, projected into frame t+1,
    lands on a valid pixel whose depth it misses by more than 10 % (moving objects, occlusions)."""
    depth, valid, K, P = geometry.depth, geometry.valid, geometry.intrinsics, geometry.world_from_cam
    T, H, W = depth.shape
    flat, _ = sample_pixels(H, W, n)
    points = geometry.points.reshape(T, H * W, 3)
    moving = total = 0
    for t in range(T - 1):
        ok = valid[t].reshape(-1)[flat]
        X = points[t, flat[ok]].astype(np.float64)
        cam = (X - P[t + 1, :3, 3]) @ P[t + 1, :3, :3]  # cam_from_world of frame t+1
        z = cam[:, 2]
        front = z > 1e-6
        u = np.round(K[t + 1, 0, 0] * cam[front, 0] / z[front] + K[t + 1, 0, 2]).astype(int)
        v = np.round(K[t + 1, 1, 1] * cam[front, 1] / z[front] + K[t + 1, 1, 2]).astype(int)
        inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        u, v, zf = u[inside], v[inside], z[front][inside]
        seen = valid[t + 1, v, u]
        d = depth[t + 1, v, u][seen]
        moving += int((np.abs(zf[seen] - d) > _DYNAMIC_REL * d).sum())
        total += int(seen.sum())
    return moving / total if total else None


def skipped_scores(shot: Shot) -> dict[str, Any]:
    """The record of a shot that was not reconstructed: its span, the reason, every score None."""
    return {"shot": shot.index, "start": shot.start, "end": shot.end, "n_frames": shot.n_frames,
            "kind": shot.kind, "skipped": shot.skipped, **{k: None for k in SCORE_NAMES}}


def shot_scores(shot: Shot, windows: Mapping[str, Any], starts: Sequence[int], geometry: Geometry,
                depth_source: np.ndarray | None, diagnostics: Mapping[str, Any], data_checks: bool) -> dict[str, Any]:
    """Every score of :data:`SCORE_NAMES` for one fused shot (module table), with the shot's span.

    Args:
        shot: the shot.
        windows: the shot's windows (``pointmap`` (G, V, H, W, 3), ``pointmap_conf`` (G, V, H, W)).
        starts: (G,) their starts in the shot's frames (0 = the shot's first frame).
        geometry: the shot's fused geometry (T_shot frames, its own world frame).
        depth_source: (T_shot, H, W) :class:`geo4d.fusion.DepthSource` codes, or None.
        diagnostics: the shot's fusion diagnostics (``windows``, ``flagged_windows``).
        data_checks: whether the shot passed the fused-geometry data checks.
    """
    g = geometry
    rotation, translation = camera_motion(g.world_from_cam, g.depth, g.valid)
    n_windows = max(1, len(diagnostics.get("windows") or starts))
    sky = float((depth_source == 0).mean()) if depth_source is not None else float((~g.valid).mean())
    residuals = window_frame_residuals(windows["pointmap"], windows["pointmap_conf"], starts, g.points, g.depth,
                                       g.valid)
    flat = [r for w in residuals for r in w]
    scores = {
        "window_agreement": float(np.median(flat)) if flat else None,
        "worst_window_agreement": worst_window(residuals),
        "confident_fraction": float(g.valid.mean()),
        "flagged_windows": len(diagnostics.get("flagged_windows") or []) / n_windows,
        "rotation_deg": rotation, "translation_rel": translation, "smoothness": smoothness(g.world_from_cam),
        "focal_stability": focal_stability(g.intrinsics), "dynamic_fraction": dynamic_fraction(g),
        "sky_fraction": sky, "data_checks": bool(data_checks),
    }
    out = {k: (v if isinstance(v, bool) else _finite(v)) for k, v in scores.items()}
    return {"shot": shot.index, "start": shot.start, "end": shot.end, "n_frames": shot.n_frames,
            "kind": shot.kind, "skipped": None, **out}
