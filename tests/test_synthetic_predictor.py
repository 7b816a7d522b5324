"""The synthetic predictor: exact gauges on clean windows, noise of the requested size, corruption."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.cameras import invert_pose, rotation_angle_deg, transform_points, unproject_depth
from geo4d.errors import InputError
from geo4d.geometry import Geometry
from geo4d.predictor import WindowPrediction, WindowPredictor
from geo4d.synthetic import make_scene, render
from geo4d.synthetic_predictor import SyntheticNoise, SyntheticPredictor
from geo4d.windows import window_starts

T, H, W, V = 28, 48, 64, 16


@pytest.fixture(scope="module")
def gt() -> Geometry:
    return render(make_scene(seed=3, n_frames=T, height=H, width=W)).geometry


def _frames(n=V):
    return np.zeros((n, H, W, 3), np.uint8)


def _gt_points_in_ref(gt, start, n=V):
    """Ground-truth points of frames start… in the camera frame of ``start`` (NaN at sky)."""
    d = np.where(np.isfinite(gt.depth[start:start + n]), gt.depth[start:start + n], np.nan).astype(np.float64)
    Xc = unproject_depth(d, gt.intrinsics[start:start + n])
    ref_from_cam = invert_pose(gt.world_from_cam[start])[None] @ gt.world_from_cam[start:start + n]
    return transform_points(ref_from_cam, Xc), ref_from_cam


def test_is_a_window_predictor_named_as_a_test_instrument(gt):
    p = SyntheticPredictor(gt, seed=0)
    assert isinstance(p, WindowPredictor)
    assert "synthetic" in p.name and "test instrument" in p.name
    assert "TEST INSTRUMENT" in p.description
    assert p.image_size is None
    params = p.parameters()
    assert params["seed"] == 0 and params["noise"]["depth_noise"] == 0.0 and "synthetic" in params["name"]


@pytest.mark.parametrize("start", [0, 4, T - V])
def test_clean_outputs_match_ground_truth_up_to_the_gauges(gt, start):
    p = SyntheticPredictor(gt, seed=11)
    pred = p.predict_window(_frames(), start)
    assert isinstance(pred, WindowPrediction)
    for name, arr in pred.as_dict().items():
        assert arr.dtype == np.float32 and np.isfinite(arr).all(), name
    g = p.gauges[start]
    assert 0.3 <= g["s_pm"] <= 3 and 0.3 <= g["s_ray"] <= 3 and g["disp_a"] > 0
    assert not g["corrupted"]
    valid = np.isfinite(gt.depth[start:start + V])
    sky = ~valid
    assert sky.any()

    # point map / s_pm = GT points in the reference (window's first) camera frame
    X_ref, ref_from_cam = _gt_points_in_ref(gt, start)
    np.testing.assert_allclose(pred.pointmap[valid] / g["s_pm"], X_ref[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred.pointmap[0][valid[0]] / g["s_pm"], X_ref[0][valid[0]], rtol=1e-5, atol=1e-5)

    # confidence: > 0 where valid, 0 at sky; lower on moving objects than elsewhere on average
    assert (pred.pointmap_conf[valid] > 0).all() and (pred.pointmap_conf[sky] == 0).all()
    dyn = gt.dynamic_mask[start:start + V]
    if dyn.any():
        assert pred.pointmap_conf[dyn].mean() < pred.pointmap_conf[valid & ~dyn].mean()

    # rays: unit directions through each pixel's GT point, moment / s_ray = c × d of the GT pose
    np.testing.assert_allclose(np.linalg.norm(pred.ray_dir, axis=-1), 1.0, atol=1e-5)
    c = ref_from_cam[:, :3, 3]
    expected_m = np.cross(np.broadcast_to(c[:, None, None], pred.ray_dir.shape), pred.ray_dir.astype(np.float64))
    np.testing.assert_allclose(pred.ray_moment / g["s_ray"], expected_m, atol=1e-5)
    to_point = X_ref - c[:, None, None, :]
    to_point /= np.linalg.norm(to_point, axis=-1, keepdims=True)
    np.testing.assert_allclose(pred.ray_dir[valid], to_point[valid], atol=1e-5)
    np.testing.assert_allclose(pred.ray_dir[0, ..., 2].min() > 0, True)  # ref camera looks along +z

    # disparity = a / depth + b on valid pixels, 0 at sky
    inv = 1.0 / gt.depth[start:start + V][valid].astype(np.float64)
    np.testing.assert_allclose(pred.disparity[valid], g["disp_a"] * inv + g["disp_b"], rtol=1e-5, atol=1e-5)
    assert (pred.disparity[sky] == 0).all()


def test_gauges_differ_between_windows_and_are_reproducible(gt):
    a = SyntheticPredictor(gt, seed=1)
    for s in window_starts(T):
        a.predict_window(_frames(), s)
    s_pms = [a.gauges[s]["s_pm"] for s in a.gauges]
    assert len(set(s_pms)) == len(s_pms)
    assert all(a.gauges[s]["s_pm"] != a.gauges[s]["s_ray"] for s in a.gauges)
    b = SyntheticPredictor(gt, seed=1)
    pb = b.predict_window(_frames(), 8)  # another order, same window → same prediction
    pa = SyntheticPredictor(gt, seed=1).predict_window(_frames(), 8)
    for name in pa.as_dict():
        np.testing.assert_array_equal(getattr(pa, name), getattr(pb, name))
    c = SyntheticPredictor(gt, seed=2)
    c.predict_window(_frames(), 8)
    assert c.gauges[8]["s_pm"] != a.gauges[8]["s_pm"]
    # noise does not change the gauges
    n = SyntheticPredictor(gt, noise=SyntheticNoise(depth_noise=0.05, pose_jitter_deg=1.0), seed=1)
    n.predict_window(_frames(), 8)
    assert n.gauges[8]["s_pm"] == a.gauges[8]["s_pm"] and n.gauges[8]["s_ray"] == a.gauges[8]["s_ray"]


def test_depth_noise_is_smooth_multiplicative_with_the_requested_size(gt):
    sigma = 0.05
    clean = SyntheticPredictor(gt, seed=4)
    noisy = SyntheticPredictor(gt, noise=SyntheticNoise(depth_noise=sigma), seed=4)
    pc = clean.predict_window(_frames(), 4)
    pn = noisy.predict_window(_frames(), 4)
    valid = np.isfinite(gt.depth[4:4 + V])
    # point maps scale along the rays: ratio of norms in each camera = the depth factor
    f = noisy.gauges[4]["depth_factor"]
    log_f = np.log(f[valid])
    assert abs(log_f.std() - sigma) < 0.01 and abs(log_f.mean()) < 0.01
    # smooth: neighbouring pixels differ far less than independent noise would (≈ 1.13 σ)
    assert np.abs(np.diff(np.log(f), axis=2)).mean() < 0.25 * sigma
    # the point map of the first frame (ref camera = its own camera) is scaled by f exactly
    r = np.linalg.norm(pn.pointmap[0], axis=-1)[valid[0]] / np.linalg.norm(pc.pointmap[0], axis=-1)[valid[0]]
    np.testing.assert_allclose(r, f[0][valid[0]], rtol=1e-4)
    # disparity consistent with the same noisy depth
    g = noisy.gauges[4]
    inv = 1.0 / (gt.depth[4:4 + V][valid] * f[valid])
    np.testing.assert_allclose(pn.disparity[valid], g["disp_a"] * inv + g["disp_b"], rtol=1e-4, atol=1e-5)
    # different windows get different fields
    noisy.predict_window(_frames(), 8)
    assert not np.allclose(noisy.gauges[8]["depth_factor"][0], f[4])


def test_pose_jitter_has_the_requested_size_and_moves_points_and_rays_together(gt):
    deg = 1.0
    p = SyntheticPredictor(gt, noise=SyntheticNoise(pose_jitter_deg=deg), seed=9)
    pred = p.predict_window(_frames(), 0)
    _, true_ref_from_cam = _gt_points_in_ref(gt, 0)
    used = p.gauges[0]["ref_from_cam"]
    np.testing.assert_allclose(used[0], np.eye(4), atol=1e-12)  # the reference frame is never jittered
    ang = rotation_angle_deg(np.swapaxes(true_ref_from_cam[1:, :3, :3], 1, 2) @ used[1:, :3, :3])
    assert 0.4 * deg < np.sqrt(np.mean(ang ** 2)) < 2.5 * deg  # |N(0,σ)| angles: rms ≈ σ
    np.testing.assert_allclose(used[:, :3, 3], true_ref_from_cam[:, :3, 3], atol=1e-12)  # no translation jitter asked
    # point map and rays use the same perturbed camera: each point lies on its pixel's ray
    c = used[:, :3, 3]
    valid = np.isfinite(gt.depth[:V])
    to_point = pred.pointmap / p.gauges[0]["s_pm"] - c[:, None, None, :]
    with np.errstate(invalid="ignore"):  # sky pixels of frame 0: 0/0, not compared
        to_point /= np.linalg.norm(to_point, axis=-1, keepdims=True)
    np.testing.assert_allclose(pred.ray_dir[valid], to_point[valid], atol=1e-4)

    pt = SyntheticPredictor(gt, noise=SyntheticNoise(pose_jitter_trans=0.02), seed=9)
    pt.predict_window(_frames(), 0)
    shift = pt.gauges[0]["ref_from_cam"][1:, :3, 3] - true_ref_from_cam[1:, :3, 3]
    med = np.median(gt.depth[0][np.isfinite(gt.depth[0])])
    assert 0.5 * 0.02 * med < shift.std() < 2 * 0.02 * med


@pytest.mark.parametrize("n", [0, 1, 2])
def test_corrupted_windows_have_the_requested_count_and_rotation(gt, n):
    p = SyntheticPredictor(gt, noise=SyntheticNoise(corrupt_windows=n, corrupt_deg=15.0), seed=5)
    starts = window_starts(T)
    preds = {s: p.predict_window(_frames(), s) for s in starts}
    flagged = [s for s in starts if p.gauges[s]["corrupted"]]
    assert len(flagged) == n and flagged == p.corrupted_starts
    for s in starts:
        X_ref, true_ref_from_cam = _gt_points_in_ref(gt, s)
        used = p.gauges[s]["ref_from_cam"]
        ang = rotation_angle_deg(np.swapaxes(true_ref_from_cam[1:, :3, :3], 1, 2) @ used[1:, :3, :3])
        valid = np.isfinite(gt.depth[s:s + V])
        pm = preds[s].pointmap / p.gauges[s]["s_pm"]
        if s in flagged:
            np.testing.assert_allclose(ang, 15.0, atol=1e-6)
            # the first frame is untouched, later frames' points rotated about the ref origin
            np.testing.assert_allclose(pm[0][valid[0]], X_ref[0][valid[0]], atol=1e-4)
            assert not np.allclose(pm[1:][valid[1:]], X_ref[1:][valid[1:]], atol=1e-2)
        else:
            np.testing.assert_allclose(ang, 0.0, atol=1e-5)
            np.testing.assert_allclose(pm[valid], X_ref[valid], rtol=1e-5, atol=1e-5)
    # the same seed picks the same windows
    assert SyntheticPredictor(gt, noise=SyntheticNoise(corrupt_windows=n), seed=5).corrupted_starts == p.corrupted_starts


def test_pointmap_z_offset(gt):
    p = SyntheticPredictor(gt, noise=SyntheticNoise(pointmap_z_offset=True), seed=3)
    pred = p.predict_window(_frames(), 4)
    g = p.gauges[4]
    X_ref, _ = _gt_points_in_ref(gt, 4)
    valid = np.isfinite(gt.depth[4:4 + V])
    assert g["pm_z_offset"] > 1.0  # the nearest valid points are metres away
    pm = pred.pointmap / g["s_pm"]
    np.testing.assert_allclose(pm[..., :2][valid], X_ref[..., :2][valid], rtol=1e-5, atol=1e-5)  # x, y unshifted
    np.testing.assert_allclose(pm[..., 2][valid], X_ref[..., 2][valid] - g["pm_z_offset"], rtol=1e-5, atol=1e-4)
    assert np.mean(pm[..., 2][valid] < 0) < 0.05  # ≈ the 2nd percentile lands at 0


def test_bad_inputs(gt):
    p = SyntheticPredictor(gt, seed=0)
    with pytest.raises(InputError, match=r"frames are 32×24 \(W×H\).*64×48"):
        p.predict_window(np.zeros((V, 24, 32, 3), np.uint8), 0)
    with pytest.raises(InputError, match="outside the ground truth"):
        p.predict_window(_frames(), T - V + 1)
    with pytest.raises(InputError, match="corrupt_windows=9 but the video has only"):
        SyntheticPredictor(gt, noise=SyntheticNoise(corrupt_windows=9))
    with pytest.raises(InputError, match="must be a geo4d.geometry.Geometry, got dict"):
        SyntheticPredictor({"depth": gt.depth})
    assert SyntheticPredictor(gt, noise={"depth_noise": 0.02}).noise.depth_noise == 0.02


def test_noise_is_a_frozen_spec_with_the_old_fields_and_defaults():
    n = SyntheticNoise.parse(None)
    assert n == SyntheticNoise() and n.fingerprint_dict() == {
        "depth_noise": 0.0, "depth_noise_cells": 4.0, "pose_jitter_deg": 0.0, "pose_jitter_trans": 0.0,
        "corrupt_windows": 0, "corrupt_deg": 15.0, "pointmap_z_offset": False,
    }
    assert not hasattr(SyntheticNoise, "from_dict")
    assert SyntheticNoise.parse(n) is n
    with pytest.raises(Exception):  # frozen
        n.depth_noise = 0.1  # type: ignore[misc]
    assert SyntheticNoise.parse({"corrupt_windows": 2, "pointmap_z_offset": True}).corrupt_windows == 2


def test_unknown_noise_key_is_refused_naming_it_and_the_allowed_keys(gt):
    with pytest.raises(InputError) as exc:
        SyntheticNoise.parse({"depth_nosie": 0.1})
    msg = str(exc.value)
    assert "'depth_nosie'" in msg and "\n" not in msg
    for key in SyntheticNoise.model_fields:
        assert key in msg, key
    with pytest.raises(InputError, match="depth_nosie.*allowed: corrupt_deg, corrupt_windows, depth_noise"):
        SyntheticPredictor(gt, noise={"depth_nosie": 0.1})


@pytest.mark.parametrize("field, value", [("depth_noise", -0.1), ("pose_jitter_deg", -1.0),
                                          ("pose_jitter_trans", -0.01), ("corrupt_deg", -5.0),
                                          ("corrupt_windows", -1), ("depth_noise_cells", 0.5),
                                          ("depth_noise", float("nan")), ("corrupt_windows", 1.5)])
def test_out_of_range_noise_is_refused_naming_the_field(field, value):
    with pytest.raises(InputError) as exc:
        SyntheticNoise.parse({field: value})
    msg = str(exc.value)
    assert msg.startswith(f"SyntheticNoise: {field}:") and "\n" not in msg, msg


def test_parameters_record_the_noise_spec_and_the_source(gt):
    noise = SyntheticNoise(depth_noise=0.01, corrupt_windows=1)
    p = SyntheticPredictor(gt, noise=noise, seed=2, source="data/clip.gt/")
    params = p.parameters()
    assert params["noise"] == noise.fingerprint_dict()
    assert params["ground_truth"] == "data/clip.gt"
    assert SyntheticPredictor(gt).parameters()["ground_truth"] == "in-memory ground truth"


def test_invalid_pixels_follow_the_valid_mask_whatever_the_depth_marker(gt):
    """A Geometry whose invalid depth is 0 (the fusion's marker) predicts like the +inf ground truth."""
    import dataclasses

    zeros = dataclasses.replace(gt, depth=np.where(gt.valid, gt.depth, 0.0).astype(np.float32), dynamic_mask=None)
    a = SyntheticPredictor(dataclasses.replace(gt, dynamic_mask=None), seed=1).predict_window(_frames(), 4)
    b = SyntheticPredictor(zeros, seed=1).predict_window(_frames(), 4)
    for name in a.as_dict():
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_predict_windows_and_spec(gt, tmp_path):
    from pipeline.predictors import predictor_from_spec
    from storage.ground_truth import write_ground_truth

    p = SyntheticPredictor(gt, seed=0)
    video = np.zeros((T, H, W, 3), np.uint8)
    starts = window_starts(T)
    out = list(p.predict_windows(video, starts, V))
    assert [g for g, _ in out] == list(range(len(starts)))
    assert sorted(p.gauges) == starts
    write_ground_truth(tmp_path / "clip.gt", gt)
    (tmp_path / "clip.mp4").write_bytes(b"")
    q = predictor_from_spec({"kind": "synthetic", "noise": {"depth_noise": 0.01}, "seed": 3}, str(tmp_path / "clip.mp4"))
    assert isinstance(q, SyntheticPredictor) and q.seed == 3 and q.noise.depth_noise == 0.01
