"""The mapping between source and network frames: plans, intrinsics both ways, padding, depth upsampling."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.errors import InputError
from geo4d.framing import Framing, depth_to_source, plan_framing


def _project(K, X):
    p = X @ K.T
    return p[:, :2] / p[:, 2:]


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
def test_intrinsics_convert_so_that_points_land_on_the_same_content(mode):
    """A 3D point seen at source pixel p is seen at network pixel A·p: K = A K_s, and back."""
    f = plan_framing((540, 960), (320, 512), mode)
    Ks = np.array([[700.0, 0, 470.0], [0, 705.0, 260.0], [0, 0, 1]])
    X = np.random.default_rng(0).normal(size=(20, 3)) + [0, 0, 6]
    ps = _project(Ks, X)
    A = f.network_from_source()
    expected = ps @ A[:2, :2].T + A[:2, 2]
    assert np.allclose(_project(f.intrinsics_to_network(Ks), X), expected)
    assert np.allclose(f.intrinsics_to_source(f.intrinsics_to_network(Ks)), Ks)
    # the source's corners land on the network frame's edges (crop: outside on the long axis)
    ul = A @ [-0.5, -0.5, 1]
    assert ul[1] == pytest.approx(-0.5 if mode != "pad" else -0.5 - f.offset[0])


def test_square_pixels_for_crop_and_pad_not_for_stretch():
    for mode in ("crop", "pad"):
        f = plan_framing((540, 960), (320, 512), mode)
        sy, sx = (r / s for r, s in zip(f.scaled_size, f.source_size))
        assert abs(sx / sy - 1) < 0.01, mode  # one scale, up to rounding the scaled size to pixels
    f = plan_framing((540, 960), (320, 512), "stretch")
    assert (512 / 960) / (320 / 540) == pytest.approx(0.9, abs=0.01) and f.scaled_size == (320, 512)


def test_pad_marks_its_bands_and_place_crops_or_pads():
    f = plan_framing((100, 400), (64, 64), "pad")
    assert f.scaled_size == (16, 64) and f.offset == (-24, 0)
    m = f.valid_mask()
    assert m[24:40].all() and not m[:24].any() and not m[40:].any()
    img = np.full((16, 64, 3), 7, np.uint8)
    out = f.place(img)
    assert out.shape == (64, 64, 3) and (out[24:40] == 7).all() and out[:24].max() == 0
    c = plan_framing((100, 400), (64, 64), "crop")
    assert c.scaled_size == (64, 256) and c.offset == (0, 96) and c.valid_mask().all()
    wide = np.arange(256)[None, :, None].repeat(64, 0).repeat(3, 2).astype(np.uint8)
    assert (c.place(wide)[0, :, 0] == np.arange(96, 160)).all()


def test_round_trip_as_stored_and_errors():
    f = plan_framing((480, 854), (320, 512), "pad", rotation=90)
    assert Framing.from_dict(f.to_dict()) == f
    with pytest.raises(InputError, match="resize 'squash': expected one of crop, pad, stretch"):
        plan_framing((480, 854), (320, 512), "squash")
    assert plan_framing((48, 64), None).mode == "none" and Framing.identity(48, 64).valid_mask().all()


def test_depth_upsampling_keeps_edges_sharp_and_interpolates_smooth_surfaces():
    f = plan_framing((64, 128), (32, 64), "crop")  # exactly 2× down
    y, x = np.mgrid[0:32, 0:64]
    ramp = 2.0 + 0.01 * x  # a smooth slanted surface
    step = np.where(x < 32, 1.0, 5.0)  # an occlusion edge
    up = depth_to_source(np.stack([ramp, step]).astype(np.float32), f)
    assert up.shape == (2, 64, 128)
    us = (np.arange(128) + 0.5) / 2 - 0.5  # network u of each source column
    assert np.allclose(up[0, 10, 2:-2], 2.0 + 0.01 * us[2:-2], atol=1e-5)  # bilinear on the ramp
    assert set(np.unique(up[1])) == {1.0, 5.0}  # no depth invented between foreground and background
    holes = np.stack([ramp]).astype(np.float32)
    holes[0, :, 40] = 0  # invalid pixels stay invalid, never blended into their neighbours
    h = depth_to_source(holes, f)
    assert (h[0][:, 80:82] == 0).all() and (h[0][h[0] > 0] >= 2.0).all()


def test_padded_pixels_take_no_part_in_the_ray_cameras():
    """Padding bands (framing ``pad``) zero the rays there: the network's rays of the black bands
    (here random) no longer bend the window's cameras."""
    from geo4d.cameras import intrinsics_matrix
    from geo4d.fusion.window_cameras import plucker_cameras
    from geo4d.plucker import plucker_rays
    from pipeline.stages import _masked
    from scipy.spatial.transform import Rotation

    f = plan_framing((64, 24), (32, 48), "pad")  # a portrait source: bands left and right
    mask = f.valid_mask()
    assert not mask.all()
    V, (H, W) = 4, f.size
    poses = np.repeat(np.eye(4)[None], V, axis=0)
    poses[:, :3, :3] = Rotation.from_euler("y", np.linspace(0, 6, V)[:, None], degrees=True).as_matrix()
    poses[:, :3, 3] = np.linspace(0, 0.2, V)[:, None] * np.array([1.0, 0, 0])
    d, m = plucker_rays(poses, intrinsics_matrix(40.0, 40.0, (W - 1) / 2, (H - 1) / 2), H, W)
    rng = np.random.default_rng(0)
    d[:, ~mask] = rng.normal(size=d[:, ~mask].shape)  # what a network may predict in the bands
    windows = {"ray_dir": d[None], "ray_moment": m[None], "pointmap_conf": np.ones((1, V, H, W)),
               "disparity": np.ones((1, V, H, W))}
    masked = _masked(windows, f)
    assert np.all(masked["ray_dir"][0][:, ~mask] == 0) and np.array_equal(masked["ray_dir"][0][:, mask], d[:, mask])

    def rotation_error_deg(ray_dir):
        cams = plucker_cameras(ray_dir, m)
        rel = np.einsum("vji,vjk->vik", cams.ref_from_cam_R, poses[:, :3, :3])
        return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1))).max()

    assert rotation_error_deg(masked["ray_dir"][0]) < 1e-6
    assert rotation_error_deg(d) > 0.5  # unmasked, the bands' rays spoil the rotations


def test_ground_truth_in_network_pixels_projects_to_the_same_points():
    """Source depth brought to the network's pixels (nearest) with K mapped by the framing: every
    network pixel back-projects to the 3D point of the source pixel it took its depth from, up to the
    half source pixel the nearest neighbour moves (crop: a 4:3 source into a 3:2 network frame)."""
    from geo4d.framing import nearest_to_network, plan_framing

    Hs, Ws, f = 48, 64, 50.0
    K = np.array([[f, 0, 31.5], [0, f, 23.5], [0, 0, 1.0]])
    rng = np.random.default_rng(0)
    depth = rng.uniform(2, 4, (1, Hs, Ws)).astype(np.float32)
    fr = plan_framing((Hs, Ws), (32, 48), "crop")
    d_net = nearest_to_network(depth, fr)
    K_net = fr.intrinsics_to_network(K)
    v, u = np.mgrid[0:32, 0:48]
    src = np.linalg.inv(fr.network_from_source()) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    us, vs = np.rint(src[0]).astype(int), np.rint(src[1]).astype(int)
    np.testing.assert_array_equal(d_net[0].ravel(), depth[0, vs, us])  # values are copied, never blended
    rays_net = np.linalg.inv(K_net) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    rays_src = np.linalg.inv(K) @ np.stack([us, vs, np.ones(u.size)])
    assert np.abs(rays_net - rays_src).max() <= 0.5 / f + 1e-9  # within half a source pixel
    padded = plan_framing((Hs, Ws), (48, 48), "pad")
    assert (nearest_to_network(depth, padded, fill=np.inf)[0, 0, :] == np.inf).all()  # padding rows: no surface
