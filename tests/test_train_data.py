"""Training data: ground truth → modality targets exactly as inference reads them back; clip sources
(synthetic scenes, a ``geo4d export`` dataset, mixtures), resizing and batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geo4d.errors import InputError
from geo4d.synthetic import make_scene, render
from geo4d_model.postprocess import SKY_EPS_DEMO, SKY_EPS_EVAL, postprocess_window
from geo4d_model.predictor import frames_to_model_input
from geo4d_model.train.data import ExportClips, MixedSource, SyntheticClips, _rendered_scene, collate, resize_clip
from geo4d_model.train.targets import clip_targets, decoded_from_targets, denormalise_pointmap

H, W, V = 32, 48, 8


@pytest.fixture(scope="module")
def scene():
    """A SYNTHETIC scene of 11 frames; the clip is frames 3..10, so its first pose is not the identity."""
    r = render(make_scene(3, n_frames=V + 3, height=H, width=W))
    g = r.geometry
    sl = slice(3, 3 + V)
    return r.frames[sl], g.depth[sl], g.intrinsics[sl], g.world_from_cam[sl]


def _points_first_camera(depth, K, world_from_cam):
    """Independent reference: X_i(u, v) = inv(P_0) P_i (z K_i⁻¹ [u, v, 1]ᵀ), per pixel, float64."""
    v, u = np.mgrid[0:depth.shape[1], 0:depth.shape[2]].astype(np.float64)
    out = np.zeros(depth.shape + (3,))
    for i in range(depth.shape[0]):
        z = np.where(np.isfinite(depth[i]), depth[i], 0.0)
        cam = np.stack([u * z, v * z, z], axis=-1) @ np.linalg.inv(K[i]).T
        T = np.linalg.inv(world_from_cam[0]) @ world_from_cam[i]
        out[i] = cam @ T[:3, :3].T + T[:3, 3]
    return out


@pytest.mark.parametrize("sky_eps", [SKY_EPS_DEMO, SKY_EPS_EVAL])
def test_targets_round_trip_through_inference_postprocessing(scene, sky_eps):
    """The perfect network's decoded window, post-processed as inference does, gives back the ground
    truth: points / s with z shifted by lower, sky invalid, cameras with translations / s, disparity
    affine in 1/z."""
    frames, depth, K, wfc = scene
    s = clip_targets(frames, depth, K, wfc, name="scene 3")
    post = postprocess_window(decoded_from_targets(s, confidence_logit=0.5), sky_eps=sky_eps)
    valid = np.isfinite(depth)
    X = _points_first_camera(depth, K, wfc)
    z = X[..., 2][valid]
    lower, scale = np.percentile(z, 2) - 0.01, np.percentile(z, 98) - np.percentile(z, 2) + 0.02
    assert np.isclose(s["scale"], scale, rtol=1e-6) and np.isclose(s["z_lower"], lower, rtol=1e-6)
    # Valid exactly where the ground truth is, except what the official rules themselves discard
    # (normalised values inside the sky band or beyond ±1.99): computed here from the targets.
    pm = np.moveaxis(s["pointmap"], 1, -1)
    lost = np.all(np.abs(pm - 1.05) < sky_eps, axis=-1) | np.any(np.abs(pm) > 1.99, axis=-1)
    assert np.array_equal(post["valid"], valid & ~lost)
    assert not post["valid"][~valid].any() and (valid & lost).mean() < 0.01
    ok = post["valid"]
    want = np.stack([X[..., 0] / scale, X[..., 1] / scale, (X[..., 2] - lower) / scale], axis=-1)
    assert np.abs(post["pts3d"][ok] - want[ok]).max() < 1e-5
    assert np.abs(denormalise_pointmap(pm, s["scale"], s["z_lower"])[ok] - X[ok]).max() < 1e-4
    assert np.allclose(post["conf"][ok], 1 / np.log1p(np.exp(0.5)), rtol=1e-6) and (post["conf"][~ok] == 0).all()
    rel = np.linalg.inv(wfc[0]) @ wfc
    assert np.abs(post["traj"][:, :3, :3] - rel[:, :3, :3]).max() < 1e-5
    assert np.abs(post["traj"][:, :3, 3] - rel[:, :3, 3] / scale).max() < 1e-5
    assert np.abs(rel[:, :3, 3]).max() > 0.2  # the camera moves: the check above can fail
    inv = 1 / depth[valid]
    unclamped = np.abs(s["disparity"][:, 0][valid]) < 1.1
    a, b = np.polyfit(inv[unclamped], post["inverse_depth"][valid][unclamped], 1)
    assert a > 0 and np.abs(a * inv[unclamped] + b - post["inverse_depth"][valid][unclamped]).max() < 1e-5
    d2, d98 = np.percentile(inv, [2, 98])
    assert np.isclose(a, 1 / (d98 - d2 + 0.02), rtol=1e-4) and unclamped.mean() > 0.9


def test_sample_layout(scene):
    frames, depth, K, wfc = scene
    s = clip_targets(frames, depth, K[0], wfc)  # one (3, 3) K for every frame
    shapes = {"frames": (V, 3, H, W), "pointmap": (V, 3, H, W), "disparity": (V, 1, H, W), "ray": (V, 3, H, W),
              "moment": (V, 3, H, W), "valid": (V, H, W), "scale": (), "z_lower": (), "depth": (V, H, W),
              "intrinsics": (V, 3, 3), "world_from_cam": (V, 4, 4)}
    assert {k: v.shape for k, v in s.items()} == shapes
    assert all(v.dtype == np.float32 for k, v in s.items() if k != "valid") and s["valid"].dtype == bool
    assert np.array_equal(s["frames"], frames_to_model_input(frames).numpy())
    sky = ~np.isfinite(depth)
    assert sky.any() and np.array_equal(s["valid"], ~sky)
    assert (s["depth"][sky] == 0).all() and np.array_equal(s["depth"][~sky], depth[~sky])
    assert np.allclose(np.moveaxis(s["pointmap"], 1, -1)[sky], 1.05) and np.allclose(s["disparity"][:, 0][sky], -1.05)
    assert np.abs(s["pointmap"]).max() <= 2 and np.abs(s["disparity"]).max() <= 1.1
    assert np.allclose(np.linalg.norm(s["ray"], axis=1), 1, atol=1e-6)
    assert np.array_equal(s["world_from_cam"][0], np.eye(4, dtype=np.float32))
    assert not np.allclose(s["world_from_cam"][1:], np.eye(4), atol=1e-3)


def test_bad_depth_is_a_one_line_error_naming_the_clip(scene):
    frames, depth, K, wfc = scene
    with pytest.raises(InputError, match=r"^video7 frames 0-7: point map z: no valid depth") as e:
        clip_targets(frames, np.full_like(depth, np.inf), K, wfc, name="video7 frames 0-7")
    assert "\n" not in str(e.value)
    poses = np.tile(np.eye(4), (V, 1, 1))
    with pytest.raises(InputError, match="clip: point map z: degenerate depth range"):
        clip_targets(frames, np.full_like(depth, 3.0), K[0], poses)


def test_percentiles_over_valid_pixels_only(scene):
    """0, negative and NaN depths are invalid like sky and do not move the percentiles."""
    frames, depth, K, wfc = scene
    bad = depth.copy()
    finite = np.isfinite(bad)
    rng = np.random.default_rng(1)
    drop = finite & (rng.random(bad.shape) < 0.2)
    bad[drop] = rng.choice([0.0, -2.0, np.nan], size=int(drop.sum()))
    s = clip_targets(frames, bad, K, wfc)
    keep = finite & ~drop
    assert np.array_equal(s["valid"], keep)
    z = _points_first_camera(np.where(keep, depth, np.inf), K, wfc)[..., 2][keep]
    assert np.isclose(s["scale"], np.percentile(z, 98) - np.percentile(z, 2) + 0.02, rtol=1e-6)
    assert not np.isclose(s["scale"], clip_targets(frames, depth, K, wfc)["scale"], rtol=1e-6)


def test_synthetic_clips_are_deterministic_and_distinct():
    src = SyntheticClips(seed=5, scene_frames=12)
    assert "synthetic" in src.name
    a = src.clip(2, (16, 24), 6)
    _rendered_scene.cache_clear()  # rendered afresh, not the cached scene
    b = SyntheticClips(seed=5, scene_frames=12).clip(2, (16, 24), 6)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    b["depth"][:] = -1  # a sample shares no memory with the cached scene
    assert np.array_equal(src.clip(2, (16, 24), 6)["depth"], a["depth"])
    c = src.clip(3, (16, 24), 6)
    assert not np.array_equal(a["frames"], c["frames"]) and int(a["fs"]) == 24
    # The clip is a window of scene 5 + 2, rendered at the requested size.
    r = render(make_scene(7, n_frames=12, height=16, width=24))
    starts = [t for t in range(7) if np.array_equal(a["frames"], frames_to_model_input(r.frames[t:t + 6]).numpy())]
    assert len(starts) == 1
    with pytest.raises(InputError, match="n_frames 13 > scene_frames 12"):
        src.clip(0, (16, 24), 13)
    with pytest.raises(InputError, match="index must be an integer >= 0"):
        src.clip(-1, (16, 24), 4)
    with pytest.raises(InputError, match="seed must be an integer >= 0, got -1"):
        SyntheticClips(seed=-1)


def test_collate_batch_layout():
    src = SyntheticClips(seed=0, scene_frames=6, fs=10)
    samples = [src.clip(i, (16, 24), 4) for i in range(3)]
    batch = collate(samples)
    assert tuple(batch["frames"].shape) == (3, 3, 4, 16, 24) and tuple(batch["disparity"].shape) == (3, 1, 4, 16, 24)
    assert tuple(batch["valid"].shape) == (3, 4, 16, 24) and batch["valid"].dtype == torch.bool
    assert tuple(batch["depth"].shape) == (3, 4, 16, 24) and tuple(batch["scale"].shape) == (3,)
    assert tuple(batch["world_from_cam"].shape) == (3, 4, 4, 4)
    assert batch["fs"].dtype == torch.long and batch["fs"].tolist() == [10, 10, 10]
    assert torch.equal(batch["ray"][1, :, 2], torch.from_numpy(samples[1]["ray"][2]))
    assert torch.equal(batch["z_lower"], torch.tensor([s["z_lower"] for s in samples]))
    with pytest.raises(InputError, match="field 'frames' of sample 1 has shape"):
        collate([samples[0], src.clip(1, (16, 32), 4)])


@pytest.mark.parametrize("src_size, size", [((48, 64), (32, 48)), ((30, 40), (32, 64)), ((24, 32), (48, 64)),
                                             ((48, 72), (32, 48))])
def test_resize_clip_intrinsics_reproject_the_resized_depth(src_size, size):
    """Every resized pixel's 3D point (resized depth and K) lands, projected with the original K, within
    half a source pixel of the source pixel its depth was sampled from (nearest sampling) — so the
    resized intrinsics reproduce the source's 3D points up to that sampling."""
    r = render(make_scene(4, n_frames=2, height=src_size[0], width=src_size[1]))
    g = r.geometry
    frames, depth, K = resize_clip(r.frames, g.depth, g.intrinsics, size)
    assert frames.shape == (2, *size, 3) and frames.dtype == np.uint8 and depth.shape == (2, *size)
    v, u = np.mgrid[0:size[0], 0:size[1]].astype(np.float64)
    for i in range(2):
        ok = np.isfinite(depth[i])
        z = depth[i][ok].astype(np.float64)
        X = np.stack([(u[ok] - K[i, 0, 2]) * z / K[i, 0, 0], (v[ok] - K[i, 1, 2]) * z / K[i, 1, 1], z], axis=-1)
        uvw = X @ g.intrinsics[i].T
        us, vs = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
        src_u, src_v = np.floor(us + 0.5).astype(int), np.floor(vs + 0.5).astype(int)
        assert (src_u >= 0).all() and (src_u < src_size[1]).all() and (src_v >= 0).all() and (src_v < src_size[0]).all()
        assert np.mean(g.depth[i][src_v, src_u] == depth[i][ok]) > 0.99
        # the frames are resized with the same geometry: colours match the source pixel's
        diff = np.abs(frames[i][ok].astype(float) - r.frames[i][src_v, src_u]).mean()
        assert diff < 12  # ~8 (bilinear vs the one pixel); 17-25 for an image shifted by 2 source pixels
    if src_size[0] * size[1] == src_size[1] * size[0]:  # no crop: exactly torch's nearest-exact
        t = torch.from_numpy(np.ascontiguousarray(g.depth))[None]
        assert np.array_equal(depth, torch.nn.functional.interpolate(t, size=size, mode="nearest-exact")[0].numpy())


def test_resize_clip_same_size_is_unchanged(scene):
    frames, depth, K, _ = scene
    f2, d2, K2 = resize_clip(frames, depth, K[0], (H, W))
    assert np.array_equal(f2, frames) and np.array_equal(d2, depth) and np.allclose(K2, K)


# ---- a tiny export (the layout of `geo4d export`, docs/dataset.md) --------------------------------------
def _write_export(root: Path, videos: dict[str, int], skipped: tuple[str, ...] = ()) -> None:
    """SYNTHETIC videos (name → n_frames) written with the exporter's own group writer and index schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.export import _SCHEMA, _write_video

    (root / "videos").mkdir(parents=True)
    rows = []
    for i, (vid, n) in enumerate(videos.items()):
        row = {"video_id": vid, "source": f"{vid}.mp4", "n_frames": n, "height": 24, "width": 32, "fps": 12.0 + i}
        if vid in skipped:
            rows.append(dict(row, skipped="damaged: frames chunk 2: missing"))
            continue
        r = render(make_scene(20 + i, n_frames=n, height=24, width=32))
        g = r.geometry
        arrays = {"rgb": r.frames, "depth": np.where(g.valid, g.depth, 0).astype(np.float32),
                  "intrinsics": g.intrinsics.astype(np.float32), "world_from_cam": g.world_from_cam.astype(np.float32)}
        _write_video(root / f"videos/{vid}.zarr", arrays, {"video_id": vid})
        rows.append(dict(row, zarr_path=f"videos/{vid}.zarr", skipped=None))
    pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), root / "index.parquet")


@pytest.fixture(scope="module")
def export_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_export") / "ds"
    _write_export(root, {"a": 6, "b": 9, "c": 7}, skipped=("c",))
    return root


def test_export_clips_read_every_clip_once_per_epoch(export_root):
    from storage.training_data import ExportReader, export_videos

    videos = export_videos(export_root)
    assert [v["id"] for v in videos] == ["a", "b"] and videos[1]["n_frames"] == 9
    reader = ExportReader(export_root)
    src = ExportClips(reader.videos, reader, seed=3, name=f"export {export_root}")
    n_clips = (6 - 4 + 1) + (9 - 4 + 1)
    located = [src.locate(i, 4) for i in range(n_clips)]
    assert sorted(located) == [(0, s) for s in range(3)] + [(1, s) for s in range(6)]
    assert src.locate(n_clips + 2, 4) == located[2]  # wraps around
    assert located != [src.locate(i, 4) for i in range(n_clips)][::-1] and src.fs == 12
    k, start = located[5]
    s = src.clip(5, (24, 32), 4)
    raw = reader(k, start, 4)
    assert np.array_equal(s["depth"], raw["depth"]) and np.array_equal(s["frames"], frames_to_model_input(raw["rgb"]).numpy())
    assert np.allclose(s["world_from_cam"][0], np.eye(4), atol=1e-6) and int(s["fs"]) == 12 + k
    again = ExportClips(export_videos(export_root), ExportReader(export_root), seed=3).clip(5, (16, 32), 4)
    assert again["frames"].shape == (4, 3, 16, 32) and np.array_equal(again["pointmap"], src.clip(5, (16, 32), 4)["pointmap"])
    with pytest.raises(InputError, match="no video has 10 frames"):
        src.clip(0, (24, 32), 10)


def test_missing_or_empty_export_is_a_one_line_error(tmp_path):
    from storage.training_data import ExportReader, export_videos

    for root, what in [(tmp_path / "nope", "no such directory"), (tmp_path, "not a geo4d export")]:
        with pytest.raises(InputError, match=what) as e:
            export_videos(root)
        assert str(e.value).startswith(str(root)) and "\n" not in str(e.value)
    _write_export(tmp_path / "skipped", {"x": 5}, skipped=("x",))
    with pytest.raises(InputError, match="lists no exported video"):
        ExportReader(tmp_path / "skipped")
    with pytest.raises(InputError, match="export: no videos"):
        ExportClips([], lambda k, s, n: {})


def test_mixed_source_is_deterministic_and_weighted():
    a, b = SyntheticClips(seed=0, scene_frames=4), SyntheticClips(seed=500, scene_frames=4)
    mix = MixedSource([a, b], [3.0, 1.0], seed=1)
    picks = np.array([mix.pick(i) for i in range(2000)])
    assert 0.70 < (picks == 0).mean() < 0.80
    assert [mix.pick(i) for i in range(50)] == [MixedSource([a, b], [3, 1], seed=1).pick(i) for i in range(50)]
    assert [mix.pick(i) for i in range(50)] != [MixedSource([a, b], [3, 1], seed=2).pick(i) for i in range(50)]
    assert all(MixedSource([a, b], [0, 1]).pick(i) == 1 for i in range(100))
    i = int(np.argmax(picks == 1))
    assert np.array_equal(mix.clip(i, (16, 24), 4)["frames"], b.clip(i, (16, 24), 4)["frames"])
    assert mix.name == f"{a.name} + {b.name}"
    with pytest.raises(InputError, match="weights must be 2 finite numbers"):
        MixedSource([a, b], [1.0, -1.0])


def test_perfect_network_windows_fuse_to_the_exact_geometry():
    """What a perfect network decodes for every window of a SYNTHETIC video (its targets), read back by
    inference's post-processing and fused with the z offset the network's point maps carry (as the
    Geo4D predictor declares), gives back the ground truth: the targets, the post-processing, the
    fusion's z-offset handling and the metrics agree. (Without estimating the offset the same windows
    do not fuse.)"""
    from geo4d.errors import PredictionError
    from geo4d.fusion import FusionConfig, fuse
    from geo4d.metrics import reconstruction_metrics
    from geo4d.windows import WINDOW_SIZE, window_starts
    from geo4d_model.postprocess import to_window_prediction
    from geo4d_model.predictor import Geo4DPredictor

    T = 24
    g = (r := render(make_scene(2_000_002, n_frames=T, height=H, width=W))).geometry
    starts = window_starts(T)
    preds = [to_window_prediction(postprocess_window(decoded_from_targets(clip_targets(
        r.frames[s:s + WINDOW_SIZE], g.depth[s:s + WINDOW_SIZE], g.intrinsics[s:s + WINDOW_SIZE],
        g.world_from_cam[s:s + WINDOW_SIZE])))) for s in starts]
    windows = {k: np.stack([p.as_dict()[k] for p in preds]) for k in preds[0].as_dict()}
    assert Geo4DPredictor.pointmap_z_offset is True
    res = fuse(windows, starts, T, config=FusionConfig(pointmap_z_offset=Geo4DPredictor.pointmap_z_offset))
    m = reconstruction_metrics(res.geometry.depth, res.geometry.intrinsics, res.geometry.world_from_cam,
                               g.depth, g.intrinsics, g.world_from_cam)
    assert m["abs_rel"] < 1e-3 and m["ate"] < 1e-3 and m["rpe_rot"] < 0.05, m
    try:
        wrong = fuse(windows, starts, T, config=FusionConfig(pointmap_z_offset=False))
    except PredictionError:
        return
    m = reconstruction_metrics(wrong.geometry.depth, wrong.geometry.intrinsics, wrong.geometry.world_from_cam,
                               g.depth, g.intrinsics, g.world_from_cam)
    assert m["abs_rel"] > 0.05, m
