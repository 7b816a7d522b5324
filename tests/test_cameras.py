"""Camera conventions (geo4d/cameras.py), windows and Umeyama alignment."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.align import apply_sim3, umeyama
from geo4d.cameras import (
    check_shape, compose_poses, intrinsics_matrix, invert_pose, is_rotation, project_points,
    rotation_angle_deg, transform_points, unproject_depth,
)
from geo4d.plucker import plucker_rays
from geo4d.windows import VideoTooShortError, window_starts


def _rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(deg)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def _pose(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def test_unproject_then_project_returns_pixels():
    K = intrinsics_matrix(50.0, 55.0, 15.5, 11.5)
    depth = np.random.default_rng(0).uniform(1, 5, size=(24, 32))
    pts = unproject_depth(depth, K)
    uv, z = project_points(pts, K)
    v, u = np.mgrid[0:24, 0:32]
    assert np.allclose(uv[..., 0], u) and np.allclose(uv[..., 1], v) and np.allclose(z, depth)
    # OpenCV axes: a pixel right of / below the principal point has positive X / Y.
    assert pts[0, -1, 0] > 0 and pts[-1, 0, 1] > 0 and pts[0, 0, 0] < 0 and pts[0, 0, 1] < 0


def test_pose_naming_direction_and_inverse():
    world_from_cam = _pose(_rot([0, 1, 0], 30), [1.0, 2.0, 3.0])
    origin_cam = np.zeros((1, 3))
    # The camera centre in the world is the translation of world_from_cam.
    assert np.allclose(transform_points(world_from_cam, origin_cam), [[1, 2, 3]])
    cam_from_world = invert_pose(world_from_cam)
    assert np.allclose(compose_poses(cam_from_world, world_from_cam), np.eye(4))
    p = np.random.default_rng(1).normal(size=(5, 3))
    assert np.allclose(transform_points(cam_from_world, transform_points(world_from_cam, p)), p)


def test_batched_transform_and_rotation_helpers():
    T = np.stack([_pose(_rot([1, 0, 0], 10 * i), [i, 0, 0]) for i in range(3)])
    pts = np.zeros((3, 4, 5, 3))
    out = transform_points(T, pts)
    assert out.shape == (3, 4, 5, 3) and np.allclose(out[2, 1, 1], [2, 0, 0])
    assert np.allclose(rotation_angle_deg(T[:, :3, :3]), [0, 10, 20])
    assert is_rotation(T[:, :3, :3]).all() and not is_rotation(np.diag([1.0, 1.0, -1.0]))


def test_shape_errors_say_expected_and_got():
    with pytest.raises(ValueError, match=r"trans_01: expected shape \(\.\.\., 4, 4\), got \(3, 3\)"):
        transform_points(np.eye(3), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"points_1: expected shape \(\.\.\., 3\), got \(2, 2\)"):
        transform_points(np.eye(4), np.zeros((2, 2)))
    check_shape(np.zeros((2, 5, 3)), ("...", None, 3), "x")


def test_plucker_rays_are_unit_and_moment_is_centre_cross_direction():
    K = intrinsics_matrix(30.0, 30.0, 7.5, 5.5)
    ref_from_cam = np.stack([np.eye(4), _pose(_rot([0, 1, 0], 5), [0.5, -0.1, 0.2])])
    d, m = plucker_rays(ref_from_cam, K, 12, 16)
    assert np.allclose(np.linalg.norm(d, axis=-1), 1)
    assert np.allclose(m[0], 0)
    assert np.allclose(m[1], np.cross([0.5, -0.1, 0.2], d[1]))
    # Every ray passes through its pixel's unprojected point.
    X = transform_points(ref_from_cam[1], unproject_depth(np.full((12, 16), 2.0), K))
    assert np.allclose(np.cross(X, d[1]), m[1])


def test_window_starts_cover_every_frame_without_duplicates():
    for T in range(16, 80):
        s = window_starts(T)
        covered = set()
        for a in s:
            covered.update(range(a, a + 16))
        assert covered == set(range(T)) and len(set(s)) == len(s) and s[-1] == T - 16
    assert window_starts(16) == [0] and window_starts(20) == [0, 4] and window_starts(21) == [0, 4, 5]
    with pytest.raises(VideoTooShortError, match="15 frames, fewer than one window of 16"):
        window_starts(15)


def test_umeyama_recovers_similarity_with_weights_and_outliers():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(50, 3))
    R = _rot([1, 2, 3], 40)
    dst = apply_sim3(1.7, R, np.array([1.0, -2.0, 0.5]), src)
    w = np.ones(50)
    dst[:5] += 10.0
    w[:5] = 0.0
    s, R2, t2 = umeyama(src, dst, w)
    assert abs(s - 1.7) < 1e-9 and np.allclose(R2, R) and np.allclose(t2, [1, -2, 0.5])
    s, _, _ = umeyama(src, dst[:, :] * 1, w, with_scale=False)
    assert s == 1.0
    with pytest.raises(ValueError, match="weights must be finite"):
        umeyama(src, dst, np.zeros(50))
