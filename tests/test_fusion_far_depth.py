"""Depth from the disparity where the point map gives none (far regions), and ``depth_source``.

The synthetic predictor (a test instrument) marks the point map invalid beyond ``pointmap_max_depth``
while the disparity stays valid there (sky keeps disparity 0), so the far pixels' depth can only come
from the disparity through each window's fitted affine map.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_synthetic_videos

from geo4d.fusion import DepthSource, fuse
from geo4d.fusion.depth import DepthAccumulator
from geo4d.predictor import MODALITIES
from geo4d.windows import window_starts

T, H, W = 32, 32, 48
NOISY = {"depth_noise": 0.05, "pose_jitter_deg": 0.5}


def _video(scene_seed: int = 1):
    from geo4d.synthetic import make_scene, render

    return render(make_scene(scene_seed, n_frames=T, height=H, width=W))


def _far_limit(gt, quantile: float = 0.7) -> float:
    """A point-map range that leaves the farthest 30 % of the valid pixels to the disparity."""
    return float(np.quantile(gt.depth[gt.valid], quantile))


def _predict(video, noise: dict, seed: int = 0):
    from geo4d.synthetic_predictor import SyntheticPredictor

    pred = SyntheticPredictor(video.geometry, noise=noise, seed=seed)
    starts = window_starts(T)
    preds = [pred.predict_window(video.frames[s : s + 16], s) for s in starts]
    return pred, starts, {k: np.stack([getattr(p, k) for p in preds]) for k in MODALITIES}


def _masks(gt, max_depth: float):
    """(far, near, sky): GT-valid beyond the point map's range, GT-valid within it, GT-invalid."""
    valid = np.asarray(gt.valid, bool)
    far = valid & (np.where(valid, gt.depth, 0.0) > max_depth)
    return far, valid & ~far, ~valid


def _rel_errors(res, gt, mask, ref):
    """Relative depth errors on ``mask`` after the one scale that matches the ``ref`` pixels."""
    d = res.geometry.depth
    s = np.median(gt.depth[ref] / d[ref])
    return np.abs(s * d[mask] - gt.depth[mask]) / gt.depth[mask]


@pytest.fixture(scope="module")
def far_clean():
    video = _video()
    max_depth = _far_limit(video.geometry)
    pred, starts, win = _predict(video, {"pointmap_max_depth": max_depth})
    return video.geometry, pred, starts, win, max_depth, fuse(win, starts, T)


@pytest.fixture(scope="module")
def far_noisy():
    video = _video()
    max_depth = _far_limit(video.geometry)
    pred, starts, win = _predict(video, {**NOISY, "pointmap_max_depth": max_depth})
    return video.geometry, pred, starts, win, max_depth, fuse(win, starts, T)


def test_the_instrument_hides_far_points_but_keeps_their_disparity(far_clean):
    gt, pred, starts, win, max_depth, _ = far_clean
    far, near, sky = _masks(gt, max_depth)
    for g, s in enumerate(starts):
        f = far[s : s + 16]
        assert (win["pointmap_conf"][g][f] == 0).all() and (win["pointmap"][g][f] == 0).all()
        assert (win["pointmap_conf"][g][near[s : s + 16]] > 0).all()
        assert (win["disparity"][g][f] != 0).all() and (win["disparity"][g][sky[s : s + 16]] == 0).all()


def test_far_pixels_get_depth_from_the_disparity(far_clean):
    gt, _, starts, win, max_depth, res = far_clean
    far, near, sky = _masks(gt, max_depth)
    assert far.sum() > 0.2 * (far.sum() + near.sum())
    src = res.depth_source
    assert src.shape == (T, H, W) and src.dtype == np.uint8
    assert (src[far] == DepthSource.DISPARITY).all() and (src[near] == DepthSource.POINTMAP).all()
    assert (src[sky] == DepthSource.NONE).all()
    g = res.geometry
    assert (g.depth[far] > 0).all() and (g.confidence[far] > 0).all() and g.valid[far].all()
    assert (g.depth[sky] == 0).all() and (g.confidence[sky] == 0).all() and (g.points[sky] == 0).all()
    assert (np.linalg.norm(g.points[far], axis=-1) > 0).all()
    # Clean input: the disparity-only depth is exact up to the video's one scale, as the rest is.
    assert _rel_errors(res, gt, far, near).max() < 1e-4
    assert res.diagnostics["depth_source"] == {"none": int(sky.sum()), "pointmap": int(near.sum()),
                                               "disparity": int(far.sum())}
    # Without the option the far pixels have no depth (what the fusion gave before).
    off = fuse(win, starts, T, config={"disparity_only_depth": False})
    assert (off.geometry.depth[far] == 0).all() and not (off.depth_source == DepthSource.DISPARITY).any()
    assert np.array_equal(off.geometry.depth[near], g.depth[near])


def test_noisy_far_pixels_stay_close_to_ground_truth(far_noisy):
    gt, _, _, _, max_depth, res = far_noisy
    far, near, sky = _masks(gt, max_depth)
    assert (res.depth_source[far] == DepthSource.DISPARITY).all()
    err_far = _rel_errors(res, gt, far, near)
    err_near = _rel_errors(res, gt, near, near)
    assert err_far.mean() < 0.05 and err_far.mean() < 1.5 * err_near.mean()
    assert (res.geometry.depth[sky] == 0).all()


def _sky_disparity(win, starts, sky, values_of_window):
    """The windows with the sky pixels' disparity replaced by ``values_of_window(g)``."""
    bad = {k: v.copy() for k, v in win.items()}
    for g, s in enumerate(starts):
        d = bad["disparity"][g]
        d[sky[s : s + 16]] = values_of_window(g)
    return bad


def test_sky_beyond_the_affine_maps_far_end_stays_invalid(far_noisy):
    gt, pred, starts, win, max_depth, res = far_noisy
    far, _, sky = _masks(gt, max_depth)
    gauges = [pred.gauges[s] for s in starts]
    # No positive inverse depth through the map (disparity below its shift b).
    below = _sky_disparity(win, starts, sky, lambda g: gauges[g]["disp_b"] - 0.02)
    # A positive inverse depth so small that the disparity's noise makes its depth meaningless.
    edge = _sky_disparity(win, starts, sky, lambda g: gauges[g]["disp_b"] + 1e-5 * gauges[g]["disp_a"])
    for bad in (below, edge):
        out = fuse(bad, starts, T)
        assert (out.geometry.depth[sky] == 0).all() and (out.depth_source[sky] == DepthSource.NONE).all()
        assert (out.depth_source[far] == DepthSource.DISPARITY).all()


def test_disparity_min_also_bounds_the_disparity_only_depth(far_clean):
    gt, _, starts, win, max_depth, _ = far_clean
    far, _, _ = _masks(gt, max_depth)
    top = max(float(win["disparity"][g][far[s : s + 16]].max()) for g, s in enumerate(starts))
    out = fuse(win, starts, T, config={"disparity_min": top})
    assert not (out.depth_source == DepthSource.DISPARITY).any() and (out.geometry.depth[far] == 0).all()


@pytest.mark.parametrize("noise", [{}, NOISY], ids=["clean", "noisy"])
def test_without_far_regions_nothing_changes(noise):
    video = _video()
    _, starts, win = _predict(video, noise)
    res = fuse(win, starts, T)
    off = fuse(win, starts, T, config={"disparity_only_depth": False})
    assert not (res.depth_source == DepthSource.DISPARITY).any()
    assert np.array_equal(res.depth_source == DepthSource.POINTMAP, res.geometry.confidence > 0)
    for name in ("depth", "confidence", "points", "world_from_cam", "intrinsics"):
        assert np.array_equal(getattr(res.geometry, name), getattr(off.geometry, name)), name
    if not noise:  # clean stays exact
        near = video.geometry.valid
        assert _rel_errors(res, video.geometry, near, near).max() < 1e-5


def test_accumulator_uses_the_fallback_only_where_no_point_map_depth_is():
    out = {}
    acc = DepthAccumulator(1, 1, 3, np.array([2]), lambda i, d, c, s: out.update(d=d, c=c, s=s), 0.15, 0.05,
                           fallback_max_spread=0.25)
    one = np.ones((1, 3))
    main_w = np.array([[1.0, 0.0, 0.0]])
    # Window A: point map at pixel 0 only; disparity-only depths 5 (pixels 1, 2).
    acc.add(0, [(np.log(2.0) * one, main_w, one)], fallback=[(np.log(5.0) * one, np.array([[1.0, 1.0, 1.0]]), one)])
    # Window B: no point map; disparity-only depths agree at pixel 1 (5.5), disagree at pixel 2 (50).
    acc.add(0, [], fallback=[(np.log(np.array([[5.0, 5.5, 50.0]])), one, one)])
    assert out["s"].tolist() == [[1, 2, 0]]
    assert out["d"][0, 0] == pytest.approx(2.0) and 5.0 < out["d"][0, 1] < 5.5 and out["d"][0, 2] == 0
    assert out["c"][0, 1] > 0 and out["c"][0, 2] == 0


# ---- store, stage and export -------------------------------------------------------------------

def _fused_store(tmp_path, res):
    from storage.store import Store, VideoInfo

    st = Store(tmp_path / "s.zarr")
    st.ensure_video(VideoInfo("v", "synthetic (test)", T, H, W, 10.0))
    st.write_fused("v", res.geometry, diagnostics=res.diagnostics, depth_source=res.depth_source)
    return st


def test_store_round_trips_depth_source_and_reads_older_stores(far_clean, tmp_path):
    from storage.verify import check_video

    res = far_clean[-1]
    st = _fused_store(tmp_path, res)
    got = st.read_depth_source("v")
    assert got.dtype == np.uint8 and np.array_equal(got, res.depth_source)
    st.record_stage("v", "fuse", "complete")
    check = check_video(st, "v", stages=("fuse",))
    assert "fused/depth_source" in [a.array for a in check.arrays] and not check.damaged
    # A store fused before the array existed (written without it): point map wherever confidence > 0.
    st.write_fused("v", res.geometry, diagnostics=res.diagnostics)
    assert "depth_source" not in st.root["videos/v/fused"]
    old = st.read_depth_source("v")
    assert np.array_equal(old, np.where(res.geometry.confidence > 0, 1, 0).astype(np.uint8))
    assert "fused/depth_source" not in [a.array for a in check_video(st, "v", stages=("fuse",)).arrays]


def test_store_refuses_a_bad_depth_source(far_clean, tmp_path):
    from geo4d.errors import StoreError
    from storage.store import Store, VideoInfo

    res = far_clean[-1]
    st = Store(tmp_path / "s.zarr")
    st.ensure_video(VideoInfo("v", "synthetic (test)", T, H, W, 10.0))
    with pytest.raises(ValueError, match=r"^fused/depth_source: expected shape \(32, 32, 48\), got \(32, 48\)$"):
        st.write_fused("v", res.geometry, depth_source=res.depth_source[:, 0])
    with pytest.raises(ValueError, match=r"^fused/depth_source: values must be codes \[0, 1, 2\]"):
        st.write_fused("v", res.geometry, depth_source=np.full((T, H, W), 7, np.uint8))
    assert "fused" not in st.root["videos/v"]  # refused before anything was written
    with pytest.raises(StoreError, match="no fused group"):
        st.read_depth_source("v")


def test_fuse_stage_writes_depth_source_and_export_carries_it(tmp_path):
    import zarr

    from geo4d.synthetic import make_scene, render
    from pipeline import stages
    from storage.export import export_dataset
    from storage.store import Store

    (path,) = write_synthetic_videos(tmp_path, [50])
    gt = render(make_scene(seed=50, n_frames=20, height=48, width=64)).geometry
    max_depth = _far_limit(gt)
    st = Store(tmp_path / "s.zarr")
    vid = stages.decode_stage(st, str(path), video_id="v0").video_id
    stages.windows_stage(st, vid, {"kind": "synthetic", "noise": {"pointmap_max_depth": max_depth}})
    stages.fuse_stage(st, vid)
    src = st.read_depth_source(vid)
    far, near, sky = _masks(gt, max_depth)
    assert (src[far] == DepthSource.DISPARITY).mean() > 0.99 and (src[sky] == DepthSource.NONE).all()
    export_dataset(st, tmp_path / "ds")
    g = zarr.open_group(str(tmp_path / "ds" / "videos" / "v0.zarr"), mode="r")
    assert g["depth_source"].dtype == np.uint8 and np.array_equal(g["depth_source"][:], src)
    assert np.array_equal(g["depth"][:] > 0, src > 0)


@pytest.mark.parametrize("seed", range(4))
def test_pnp_of_points_on_one_plane(seed):
    """Only the ground within the point map's range: every valid point on one plane, where the
    general DLT is degenerate; the camera must still be exact."""
    from scipy.spatial.transform import Rotation

    from geo4d.fusion.window_cameras import pnp

    rng = np.random.default_rng(seed)
    f, cx, cy = 60.0, 23.5, 15.5
    R = Rotation.from_rotvec(rng.normal(0, 0.05, 3)).as_matrix()  # ref_from_cam
    c = rng.normal(0, 0.5, 3)
    uv = np.stack(np.meshgrid(np.arange(0, 48, 3.0), np.arange(20, 32, 2.0)), -1).reshape(-1, 2)  # lower rows
    rays = np.stack([(uv[:, 0] - cx) / f, (uv[:, 1] - cy) / f, np.ones(len(uv))], -1) @ R.T  # world directions
    normal = np.array([0.05, 1.0, 0.1]) / np.linalg.norm([0.05, 1.0, 0.1])  # ground 1.5 below the camera (y down)
    t = 1.5 / (rays @ normal)
    assert (t > 0).all()
    P = c + t[:, None] * rays
    out = pnp(P[None], uv, np.ones((1, len(uv))), np.array([f]), cx, cy)
    assert np.allclose(out["R"][0], R, atol=1e-8) and np.allclose(out["c"][0], c, atol=1e-8)
    assert out["rms"][0] < 1e-6
