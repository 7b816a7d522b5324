"""The one geometry record: shape checks, the valid mask, world points; the store and ground truth
hand it back with their on-disk names kept to themselves."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.geometry import Geometry

T, H, W = 3, 4, 5


def _K() -> np.ndarray:
    return np.tile(np.array([[4.0, 0, 2], [0, 4, 1.5], [0, 0, 1]]), (T, 1, 1))


def test_from_depth_marks_sky_and_zero_invalid():
    depth = np.full((T, H, W), 2.0, np.float32)
    depth[0, 0, 0], depth[1, 1, 1] = np.inf, 0.0
    g = Geometry.from_depth(depth, _K(), np.tile(np.eye(4), (T, 1, 1)))
    assert (g.n_frames, g.height, g.width) == (T, H, W)
    assert g.valid.sum() == T * H * W - 2 and not g.valid[0, 0, 0] and not g.valid[1, 1, 1]
    pts = g.points_world()
    assert np.isnan(pts[0, 0, 0]).all() and np.allclose(pts[2, :, :, 2], 2.0)


def test_world_points_follow_the_camera_to_world_pose():
    pose = np.tile(np.eye(4), (T, 1, 1))
    pose[1, :3, 3] = [1.0, 0.0, 0.0]  # camera 1 one unit to the right of the world origin
    g = Geometry.from_depth(np.ones((T, H, W)), _K(), pose)
    assert np.allclose(g.points_world()[1] - g.points_world()[0], [1.0, 0.0, 0.0])


@pytest.mark.parametrize("field, value, message", [
    ("valid", np.ones((T, H, W + 1), bool), r"valid: expected shape \(3, 4, 5\), got \(3, 4, 6\)"),
    ("intrinsics", np.eye(3), r"intrinsics: expected shape \(3, 3, 3\), got \(3, 3\)"),
    ("world_from_cam", np.tile(np.eye(4), (T - 1, 1, 1)), r"world_from_cam: expected shape \(3, 4, 4\), got \(2, 4, 4\)"),
    ("points", np.zeros((T, H, W)), r"points: expected shape \(3, 4, 5, 3\), got \(3, 4, 5\)"),
])
def test_shapes_are_checked_with_expected_and_got(field, value, message):
    kw = dict(depth=np.ones((T, H, W)), valid=np.ones((T, H, W), bool), intrinsics=_K(),
              world_from_cam=np.tile(np.eye(4), (T, 1, 1)))
    kw[field] = value
    with pytest.raises(ValueError, match=message):
        Geometry(**kw)


def test_ground_truth_round_trip_is_a_geometry(tmp_path):
    from storage.ground_truth import read_ground_truth, write_ground_truth

    depth = np.full((T, H, W), 3.0, np.float32)
    g = Geometry(depth, np.ones((T, H, W), bool), _K(), np.tile(np.eye(4), (T, 1, 1)), fps=12.0, meta={"seed": 7})
    g.valid[0, 0, 0] = False  # written as +inf (sky)
    back = read_ground_truth(write_ground_truth(tmp_path / "v.gt", g))
    assert isinstance(back, Geometry) and back.fps == 12.0 and back.meta["seed"] == 7
    assert np.isinf(back.depth[0, 0, 0]) and np.array_equal(back.valid, g.valid)
    assert not back.dynamic_mask.any()
