"""Quality scores of a fused shot (issue 15): each score measured on inputs whose answer is known."""

from __future__ import annotations

import numpy as np

from geo4d.geometry import Geometry
from geo4d.quality import (SCORE_NAMES, camera_motion, dynamic_fraction, focal_stability, shot_scores, skipped_scores,
                           smoothness, window_agreement)
from geo4d.shots import Shot


def _scene(T=20, H=24, W=32, seed=0):
    from geo4d.synthetic import make_scene, render

    return render(make_scene(seed=seed, n_frames=T, height=H, width=W)).geometry


def _points(g: Geometry) -> np.ndarray:
    return g.points_world() if g.points is None else g.points


def _windows_from_truth(g: Geometry, starts, V, rotate_deg=0.0, rigid=False):
    """Window point maps = the true world points in each window's first camera, optionally with the
    frames after the first of window 1 rotated (a corrupted window): by a growing angle (a drift) or,
    ``rigid``, all by ``rotate_deg``."""
    from geo4d.cameras import invert_pose

    X = np.where(g.valid[..., None], _points(g), 0.0)
    pm, conf = [], []
    for k, s in enumerate(starts):
        ref = invert_pose(g.world_from_cam[s])
        P = X[s:s + V] @ ref[:3, :3].T + ref[:3, 3]
        if k == 1 and rotate_deg:
            a = np.radians(rotate_deg) * (np.minimum(np.arange(V), 1) if rigid else np.linspace(0, 1, V))[:, None, None, None]
            x, z = P[..., 0].copy(), P[..., 2].copy()
            P[..., 0] = np.cos(a[..., 0]) * x + np.sin(a[..., 0]) * z
            P[..., 2] = -np.sin(a[..., 0]) * x + np.cos(a[..., 0]) * z
        pm.append(P)
        conf.append(g.valid[s:s + V].astype(np.float32))
    return np.stack(pm), np.stack(conf)


def test_window_agreement_is_zero_for_consistent_windows_and_grows_with_a_drift():
    g = _scene()
    depth = np.where(g.valid, g.depth, 0.0)
    starts = [0, 4]
    pm, conf = _windows_from_truth(g, starts, 16)
    clean = window_agreement(pm, conf, starts, _points(g), depth, g.valid)
    pm_bad, _ = _windows_from_truth(g, starts, 16, rotate_deg=20.0)
    bad = window_agreement(pm_bad, conf, starts, _points(g), depth, g.valid)
    assert clean < 1e-4 and bad > 100 * max(clean, 1e-6) and bad > 0.005


def test_worst_window_agreement_sees_one_bad_window_the_median_hides():
    from geo4d.quality import window_frame_residuals, worst_window

    g = _scene(T=24)
    depth = np.where(g.valid, g.depth, 0.0)
    starts = [0, 4, 8]
    args = (starts, _points(g), depth, g.valid)
    clean = window_frame_residuals(*_windows_from_truth(g, starts, 16), *args)
    assert [len(w) for w in clean] == [16, 16, 16] and worst_window(clean) < 1e-4
    # Window 1 rigidly wrong after its first frame: its alignment fits 15 frames, frame 0 misses.
    pm, conf = _windows_from_truth(g, starts, 16, rotate_deg=15.0, rigid=True)
    bad = window_frame_residuals(pm, conf, *args)
    flat = [r for w in bad for r in w]
    assert np.median(flat) < 1e-3 and worst_window(bad) > 0.05 and worst_window(bad) == max(bad[1])
    assert worst_window([[], []]) is None


def test_camera_motion_smoothness_and_focal():
    T = 11
    P = np.tile(np.eye(4), (T, 1, 1))
    P[:, 0, 3] = np.arange(T) * 0.1  # straight line at constant speed, 1 unit long
    a = np.radians(2.0) * np.arange(T)
    P[:, 0, 0], P[:, 0, 2], P[:, 2, 0], P[:, 2, 2] = np.cos(a), np.sin(a), -np.sin(a), np.cos(a)
    depth = np.full((T, 4, 4), 2.0)
    rot, trans = camera_motion(P, depth, depth > 0)
    assert np.isclose(rot, 20.0) and np.isclose(trans, 0.5)
    assert smoothness(P) < 1e-9
    shaky = P.copy()
    shaky[1::2, 1, 3] += 0.05
    assert smoothness(shaky) > 0.5
    assert smoothness(np.tile(np.eye(4), (T, 1, 1))) == 0.0  # a static camera
    K = np.tile(np.diag([100.0, 100.0, 1.0]), (T, 1, 1))
    assert focal_stability(K) == 0.0
    K[:, 0, 0] = np.linspace(90, 110, T)
    assert 0.05 < focal_stability(K) < 0.1


def test_dynamic_fraction_sees_moving_pixels():
    g = _scene(T=12, seed=3)
    static = Geometry(np.where(g.valid, g.depth, 0.0), g.valid, g.intrinsics, g.world_from_cam, points=_points(g))
    base = dynamic_fraction(static)
    moved = static.depth.copy()
    moved[1::2, :, :16] *= 1.3  # the left half of every other frame "moves" away by 30 %
    shifted = Geometry(moved, g.valid, g.intrinsics, g.world_from_cam, points=_points(g))
    assert base is not None and dynamic_fraction(shifted) > base + 0.1


def test_shot_scores_has_every_score_and_skipped_shots_have_none():
    g = _scene()
    depth = np.where(g.valid, g.depth, 0.0).astype(np.float32)
    fused = Geometry(depth, g.valid, g.intrinsics, g.world_from_cam, points=_points(g).astype(np.float32),
                     confidence=g.valid.astype(np.float32))
    pm, conf = _windows_from_truth(g, [0, 4], 16)
    rec = shot_scores(Shot(0, 0, 20), {"pointmap": pm, "pointmap_conf": conf}, [0, 4], fused, None,
                      {"windows": [{}, {}], "flagged_windows": [1]}, True)
    assert set(SCORE_NAMES) <= set(rec) and rec["flagged_windows"] == 0.5 and rec["data_checks"] is True
    assert np.isclose(rec["sky_fraction"], 1 - g.valid.mean()) and np.isclose(rec["confident_fraction"], g.valid.mean())
    assert all(isinstance(rec[k], float) for k in SCORE_NAMES if k != "data_checks")
    short = skipped_scores(Shot(1, 20, 25, "cut", "shorter than one window (5 frames < 16)"))
    assert short["skipped"] and all(short[k] is None for k in SCORE_NAMES)
