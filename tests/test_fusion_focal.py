"""A focal length that may change (issue 13, item 4): per-frame focal with temporal smoothing,
picked automatically for a zoom, one focal for a fixed lens; the ``focal`` setting and its legacy
``shared_focal`` form; the synthetic zoom scene."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.errors import InputError
from geo4d.fusion import FusionConfig, fuse
from geo4d.fusion.focal import focal_track, frame_medians
from geo4d.predictor import stacked_windows
from geo4d.synthetic import make_scene, render
from geo4d.synthetic_predictor import SyntheticPredictor
from geo4d.windows import window_starts

NOISY = {"depth_noise": 0.05, "pose_jitter_deg": 0.5}


def _case(T: int, noise: dict, seed: int = 0, zoom: float = 0.0):
    """``(ground truth, starts, windows)`` of a small synthetic video (32×48)."""
    video = render(make_scene(seed, n_frames=T, height=32, width=48, zoom=zoom))
    pred = SyntheticPredictor(video.geometry, noise=noise, seed=seed)
    starts = window_starts(T)
    return video.geometry, starts, stacked_windows(pred, video.frames, starts)


def _focal_err(res, gt) -> np.ndarray:
    """(T,) relative focal error of every frame."""
    return np.abs(res.geometry.intrinsics[:, 0, 0] / gt.intrinsics[:, 0, 0] - 1.0)


@pytest.fixture(scope="module")
def zoom_case():
    return _case(40, NOISY, seed=1, zoom=0.3)


def test_zoom_gets_a_per_frame_focal_within_1_percent_picked_automatically(zoom_case):
    gt, starts, windows = zoom_case
    fg = gt.intrinsics[:, 0, 0]
    assert fg[-1] / fg[0] == pytest.approx(1.3)  # the scene zooms by 30 %
    res = fuse(windows, starts, 40)  # the default: focal="auto"
    intr = res.diagnostics["intrinsics"]
    assert intr["focal_mode"] == "per_frame" and intr["focal_auto"]["varies"] is True, intr
    err = _focal_err(res, gt)
    assert err.max() < 0.01, err.max()
    assert np.allclose(res.geometry.intrinsics[:, 0, 0], res.geometry.intrinsics[:, 1, 1])  # fx = fy per frame
    # One focal for the video cannot follow the zoom: the per-frame track is what fits.
    shared = fuse(windows, starts, 40, config={"focal": "shared"})
    assert shared.diagnostics["intrinsics"]["focal_mode"] == "shared"
    assert _focal_err(shared, gt).max() > 0.1 > 10 * err.max()
    # Known intrinsics still fix K, zoom or not.
    given = fuse(windows, starts, 40, config={"intrinsics": (50.0, 50.0, 23.5, 15.5)})
    assert given.diagnostics["intrinsics"]["focal_mode"] == "given"
    assert np.all(given.geometry.intrinsics[:, 0, 0] == 50.0)


def test_a_fixed_focal_with_noise_is_detected_as_shared():
    noise = {**NOISY, "focal_noise": 0.01}  # each window's frames predicted with a 1 % focal error
    gt, starts, windows = _case(40, noise, seed=2)
    res = fuse(windows, starts, 40)
    intr = res.diagnostics["intrinsics"]
    assert intr["focal_mode"] == "shared", intr
    auto = intr["focal_auto"]
    assert auto["varies"] is False and auto["noise_rel"] > 0.002  # the estimates do disagree
    f = res.geometry.intrinsics[:, 0, 0]
    assert np.ptp(f) == 0.0 and _focal_err(res, gt).max() < 0.01
    # Picking shared is the shared fusion itself: the same cameras, depth and K, bit for bit.
    shared = fuse(windows, starts, 40, config={"focal": "shared"})
    for name in ("intrinsics", "world_from_cam", "depth"):
        assert np.array_equal(getattr(shared.geometry, name), getattr(res.geometry, name)), name
    # Forced per-frame on the same windows, the focal follows the windows' estimates frame by frame.
    per = fuse(windows, starts, 40, config={"focal": "per_frame"})
    assert per.diagnostics["intrinsics"]["focal_mode"] == "per_frame" and np.ptp(per.geometry.intrinsics[:, 0, 0]) > 0


def test_clean_fixed_focal_stays_exact_and_shared():
    gt, starts, windows = _case(24, {}, seed=0)
    res = fuse(windows, starts, 24)
    assert res.diagnostics["intrinsics"]["focal_mode"] == "shared"
    assert _focal_err(res, gt).max() < 1e-6


def _window_estimates(T: int, true: np.ndarray, sigma: float, rng: np.random.Generator):
    """Per-(window, frame) focal estimates of 16-frame windows at stride 4: a per-window and a
    per-frame relative error, each of std ``sigma``."""
    starts = window_starts(T)
    frames = np.concatenate([s + np.arange(16) for s in starts])
    groups = np.repeat(np.arange(len(starts)), 16)
    e = sigma * (rng.normal(size=len(starts))[groups] + rng.normal(size=len(frames)))
    return frames, true[frames] * np.exp(e), groups


def test_smoothing_reduces_the_per_frame_focal_noise():
    T = 48
    s = np.linspace(0, 1, T)
    true = 60.0 * (1 + 0.3 * 0.5 * (1 - np.cos(np.pi * s)))
    rng = np.random.default_rng(0)
    smooth_err, raw_err = [], []
    for _ in range(6):
        frames, est, groups = _window_estimates(T, true, 0.01, rng)
        track = focal_track(frames, est, np.ones(len(frames)), groups, T)
        raw = frame_medians(frames, est, np.ones(len(frames)), T)  # unsmoothed: each frame on its own
        assert track.varies
        smooth_err.append(np.sqrt(np.mean((track.focal / true - 1) ** 2)))
        raw_err.append(np.sqrt(np.mean((raw / true - 1) ** 2)))
    assert np.mean(smooth_err) < 0.6 * np.mean(raw_err), (smooth_err, raw_err)
    # The scale came from the data: a noisier track is smoothed harder.
    frames, est, groups = _window_estimates(T, true, 0.0, rng)
    exact = focal_track(frames, est, np.ones(len(frames)), groups, T)
    frames, est, groups = _window_estimates(T, true, 0.03, rng)
    noisy = focal_track(frames, est, np.ones(len(frames)), groups, T)
    assert exact.lam < noisy.lam and np.allclose(exact.focal, true, rtol=1e-4)


def test_a_window_with_a_wrong_focal_does_not_bend_the_track():
    T = 48
    true = np.full(T, 60.0) * (1 + 0.3 * np.arange(T) / (T - 1))
    frames, est, groups = _window_estimates(T, true, 0.002, np.random.default_rng(3))
    est = np.where(groups == 4, est * 1.25, est)  # window 4 (frames 16–31) is 25 % off
    track = focal_track(frames, est, np.ones(len(frames)), groups, T)
    assert np.max(np.abs(track.focal / true - 1)) < 0.01
    assert track.weights[groups == 4].max() < 0.1 * np.median(track.weights)


def test_focal_setting_values_and_the_legacy_shared_focal():
    assert FusionConfig().focal == "auto"
    for bad, msg in [({"focal": "zoom"}, "fusion: focal: Input should be 'auto', 'shared' or 'per_frame' (got 'zoom')"),
                     ({"shared_focal": "yes"}, "fusion: shared_focal: must be true or false, got 'yes'"),
                     ({"shared_focal": True, "focal": "auto"},
                      "fusion: give focal or the legacy shared_focal, not both")]:
        with pytest.raises(InputError) as exc:
            FusionConfig.parse(bad, what="fusion")
        assert str(exc.value).startswith(msg) and "\n" not in str(exc.value), str(exc.value)
    # Old configs still parse; the default keeps the old default's fingerprint (shared_focal: true).
    assert FusionConfig.parse({"shared_focal": True}) == FusionConfig()
    assert FusionConfig.parse({"shared_focal": False}).focal == "per_frame"
    fps = {m: FusionConfig(focal=m).fingerprint_dict() for m in ("auto", "shared", "per_frame")}
    assert fps["auto"]["shared_focal"] is True and "focal" not in fps["auto"]
    assert fps["per_frame"]["shared_focal"] is False and "focal" not in fps["per_frame"]
    assert fps["shared"]["focal"] == "shared" and "shared_focal" not in fps["shared"]
    for m, fp in fps.items():
        assert FusionConfig.parse(fp).focal == m  # a recorded config parses back to the same setting


def test_focal_track_and_zoom_inputs_are_checked():
    with pytest.raises(ValueError, match=r"^values: expected shape"):
        focal_track(np.arange(4), np.ones(3), np.ones(4), np.zeros(4, int), 4)
    with pytest.raises(ValueError, match=r"^frames: expected indices in \[0, 4\), got 0…7"):
        focal_track(np.arange(8), np.ones(8), np.ones(8), np.zeros(8, int), 4)
    with pytest.raises(ValueError, match="no usable focal estimate"):
        focal_track(np.arange(4), np.full(4, np.nan), np.ones(4), np.zeros(4, int), 4)
    with pytest.raises(InputError, match=r"^synthetic scene: zoom must be a finite number > -1, got -2"):
        make_scene(0, n_frames=4, height=8, width=12, zoom=-2)
    with pytest.raises(InputError, match=r"^synthetic noise: focal_noise: Input should be greater than or equal to 0"):
        SyntheticPredictor(render(make_scene(0, n_frames=4, height=8, width=12)).geometry, noise={"focal_noise": -1})


def test_synthetic_zoom_keeps_the_scene_and_carries_per_frame_intrinsics():
    plain = make_scene(4, n_frames=8, height=16, width=24)
    assert plain.focal_scale is None and "zoom" not in plain.params
    zoomed = make_scene(4, n_frames=8, height=16, width=24, zoom=0.3)
    assert np.array_equal(plain.K, zoomed.K) and np.array_equal(plain.scene_from_cam, zoomed.scene_from_cam)
    r = render(zoomed)
    K = r.geometry.intrinsics
    assert np.array_equal(K[0], plain.K) and K[-1, 0, 0] == pytest.approx(1.3 * plain.K[0, 0])
    assert np.all(np.diff(K[:, 0, 0]) > 0) and np.array_equal(K[:, 0, 0], K[:, 1, 1])
    # The predictor's point maps are made through each frame's K: frame k projects with K_k.
    pred = SyntheticPredictor(r.geometry, seed=0)
    p = pred.predict_window(r.frames, 0)
    g = pred.gauges[0]
    ok = p.pointmap_conf > 0
    for k in (0, 7):
        P = p.pointmap[k][ok[k]].astype(np.float64) / g["s_pm"]
        cam = (P - g["ref_from_cam"][k, :3, 3]) @ g["ref_from_cam"][k, :3, :3]  # rows: Rᵀ (P − c)
        u = K[k, 0, 0] * cam[:, 0] / cam[:, 2] + K[k, 0, 2]
        assert np.allclose(u, np.nonzero(ok[k])[1], atol=1e-2)


def test_per_frame_intrinsics_reach_the_store_and_the_colmap_export(zoom_case, tmp_path):
    import pycolmap

    from geo4d.formats.colmap import SPARSE_DIR, write_colmap
    from storage.store import Store, VideoInfo

    gt, starts, windows = zoom_case
    res = fuse(windows, starts, 40)
    K = res.geometry.intrinsics
    assert np.ptp(K[:, 0, 0]) > 0.2 * K[0, 0, 0]  # a zoom: K differs per frame
    st = Store(tmp_path / "s.zarr")
    st.ensure_video(VideoInfo("z", "synthetic zoom", 40, 32, 48, 10.0))
    st.write_fused("z", res.geometry, diagnostics=res.diagnostics, intrinsics_source=2.0 * K)
    assert np.allclose(st.read_fused("z").intrinsics, K, rtol=1e-6)
    assert np.allclose(st.read_intrinsics_source("z"), 2.0 * K)
    frames = np.zeros((40, 32, 48, 3), np.uint8)
    no_points = np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    write_colmap(tmp_path / "colmap", frames, K, res.geometry.world_from_cam, *no_points)
    rec = pycolmap.Reconstruction(str(tmp_path / "colmap" / SPARSE_DIR))
    fx = {img.camera_id: rec.cameras[img.camera_id].params[0] for img in rec.images.values()}
    assert rec.num_cameras() == 40 and np.allclose(sorted(fx.values()), np.sort(K[:, 0, 0]), rtol=1e-6)
