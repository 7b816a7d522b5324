"""Closed-form window cameras used by the fusion: PnP, intrinsics, Plücker recovery, SO(3) helpers."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.cameras import intrinsics_matrix, pixel_grid, rotation_angle_deg
from geo4d.fusion.lie import inv_left_jacobian, so3_exp, so3_log
from geo4d.fusion.window_cameras import intrinsics_from_pointmap, plucker_cameras, pnp, sample_pixels
from geo4d.plucker import plucker_rays


def _scene(rng, B=5, n=300, f=60.0, cx=33.0, cy=22.0):
    uv = rng.uniform(0, 64, size=(n, 2))
    z = rng.uniform(2, 8, size=(B, n))
    cam = np.stack([(uv[:, 0] - cx) * z / f, (uv[:, 1] - cy) * z / f, z], -1)
    R = so3_exp(rng.normal(size=(B, 3)) * 0.3)
    c = rng.normal(size=(B, 3))
    P = np.einsum("bij,bnj->bni", R, cam) + c[:, None]
    return uv, P, R, c


def test_pnp_recovers_pose_and_focal_from_a_wrong_focal():
    rng = np.random.default_rng(1)
    uv, P, R, c = _scene(rng)
    w = rng.uniform(0.5, 2.0, size=P.shape[:2])
    out = pnp(P, uv, w, np.full(len(P), 52.0), 33.0, 22.0, estimate_focal=True)
    assert np.allclose(out["focal"], 60.0, rtol=1e-7)
    assert rotation_angle_deg(np.swapaxes(out["R"], -1, -2) @ R).max() < 1e-5
    assert np.allclose(out["c"], c, atol=1e-7)
    assert np.nanmax(out["rms"]) < 1e-5
    # Outliers (20 % of the points moved) are absorbed by the Huber loss.
    Pb = P.copy()
    Pb[:, :60] += rng.normal(0, 0.5, size=(len(P), 60, 3))
    out = pnp(Pb, uv, w, np.full(len(P), 60.0), 33.0, 22.0)
    assert rotation_angle_deg(np.swapaxes(out["R"], -1, -2) @ R).max() < 0.5


def test_intrinsics_and_z_offset_from_a_point_map():
    rng = np.random.default_rng(2)
    uv = pixel_grid(24, 32).reshape(-1, 2)
    z = rng.uniform(3, 6, size=len(uv))
    P = np.stack([(uv[:, 0] - 15.2) * z / 30.0, (uv[:, 1] - 11.7) * z / 30.0, z], -1)
    f, cx, cy, d, rms = intrinsics_from_pointmap(P, uv, np.ones(len(uv)))
    assert (f, cx, cy, d) == pytest.approx((30.0, 15.2, 11.7, 0.0), abs=1e-9)
    P2 = P.copy()
    P2[:, 2] -= 2.9  # the network's de-normalised point maps carry such an offset
    f, cx, cy, d, rms = intrinsics_from_pointmap(P2, uv, np.ones(len(uv)), z_offset=True)
    assert (f, cx, cy, d) == pytest.approx((30.0, 15.2, 11.7, 2.9), abs=1e-6)
    f, cx, cy, d, rms = intrinsics_from_pointmap(P, uv, np.ones(len(uv)), pp=(15.2, 11.7))
    assert f == pytest.approx(30.0, abs=1e-9)


def test_plucker_cameras_match_the_official_recovery(reference_dir):
    """Our Plücker recovery (all pixels) vs the official one (central square crop) on its fixture."""
    z = np.load(reference_dir / "fixtures" / "rays" / "cases.npz")
    for case in ("A_land_id0", "D_sintel_like_id0"):
        d = np.moveaxis(z[f"{case}.raymap"][0], 0, -1)  # (T,H,W,3)
        m = np.moveaxis(z[f"{case}.crossmap"][0], 0, -1)
        pc = plucker_cameras(d, m)
        rec = z[f"{case}.rec_P_c2w"]
        assert np.allclose(pc.ref_from_cam_R, rec[:, :3, :3], atol=1e-5), case
        assert np.allclose(pc.centres, rec[:, :3, 3], atol=1e-5), case
        assert np.allclose(pc.centres, z[f"{case}.C"], atol=1e-5), case
        K = z[f"{case}.K"]
        assert np.allclose(pc.focal, K[0, 0], rtol=1e-5) and np.allclose(pc.cx, K[0, 2], atol=1e-3)


def test_plucker_cameras_per_frame_intrinsics():
    rng = np.random.default_rng(3)
    V, H, W = 4, 20, 28
    f = np.array([30.0, 33.0, 27.0, 31.0])
    K = intrinsics_matrix(f, f, 13.2, 9.9)
    P = np.tile(np.eye(4), (V, 1, 1))
    P[1:, :3, :3] = so3_exp(rng.normal(size=(V - 1, 3)) * 0.1)
    P[1:, :3, 3] = rng.normal(size=(V - 1, 3))
    d, m = plucker_rays(P, K, H, W)
    pc = plucker_cameras(d, 2.5 * m, per_frame_intrinsics=True)
    assert np.allclose(pc.focal, f, rtol=1e-6)
    assert np.allclose(pc.ref_from_cam_R, P[:, :3, :3], atol=1e-6)
    assert np.allclose(pc.centres, 2.5 * P[:, :3, 3], atol=1e-6)
    # Procrustes against the first frame (the default, for a shared focal) mistakes part of the zoom
    # for rotation.
    err_default = rotation_angle_deg(np.swapaxes(plucker_cameras(d, m).ref_from_cam_R, -1, -2) @ P[:, :3, :3]).max()
    err_per_frame = rotation_angle_deg(np.swapaxes(pc.ref_from_cam_R, -1, -2) @ P[:, :3, :3]).max()
    assert err_default > 1e-3 > 100 * err_per_frame


def test_so3_inverse_left_jacobian_matches_finite_differences():
    rng = np.random.default_rng(4)
    theta = rng.normal(size=3) * 0.7
    J = inv_left_jacobian(theta)
    eps = 1e-6
    num = np.zeros((3, 3))
    for j in range(3):
        e = np.zeros(3)
        e[j] = eps
        num[:, j] = (so3_log(so3_exp(e) @ so3_exp(theta)) - so3_log(so3_exp(-e) @ so3_exp(theta))) / (2 * eps)
    assert np.allclose(J, num, atol=1e-6)


def test_sample_pixels_is_a_centred_grid():
    flat, uv = sample_pixels(64, 96, 768)
    assert 500 <= len(flat) <= 1100
    assert np.array_equal(flat, (uv[:, 1] * 96 + uv[:, 0]).astype(int))
    assert uv[:, 0].min() + uv[:, 0].max() == pytest.approx(95, abs=2)
