"""Synthetic scenes: rendering, ground-truth files, video files and the `geo4d synth` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geo4d.cameras import invert_pose, is_rotation, project_points, rotation_angle_deg, transform_points
from geo4d.errors import InputError
from geo4d.geometry import Geometry
from geo4d.synthetic import RenderedVideo, make_scene, render, write_video
from storage.ground_truth import (
    find_ground_truth,
    ground_truth_dir,
    read_ground_truth,
    write_ground_truth,
)

T, H, W = 20, 64, 96


@pytest.fixture(scope="module")
def video() -> RenderedVideo:
    return render(make_scene(seed=7, n_frames=T, height=H, width=W))


@pytest.fixture(scope="module")
def rendered(video) -> Geometry:
    """The rendered video's exact geometry."""
    return video.geometry


def test_rendered_video_is_frames_plus_one_geometry_record(video):
    assert video.frames.shape == (T, H, W, 3) and video.frames.dtype == np.uint8
    assert video.seed == 7
    g = video.geometry
    assert isinstance(g, Geometry)
    assert (g.n_frames, g.height, g.width) == (T, H, W)
    np.testing.assert_array_equal(g.valid, np.isfinite(g.depth))
    assert g.fps == 10.0 and g.points is None and g.confidence is None
    assert g.meta["synthetic"] is True and g.meta["seed"] == 7 and g.meta["generator"] == "geo4d.synthetic/1"
    assert g.meta["scene"]["n_frames"] == T and "intrinsics" in g.meta["scene"]
    json.dumps(g.meta)  # JSON-able
    # no duplicated geometry fields on the video itself
    for name in ("depth", "intrinsics", "world_from_cam", "dynamic_mask", "fps", "meta", "n_frames"):
        assert not hasattr(video, name), name


def test_shapes_dtypes_and_frame0_identity(rendered):
    r = rendered
    assert r.depth.shape == (T, H, W) and r.depth.dtype == np.float32
    assert r.intrinsics.shape == (T, 3, 3)
    assert r.world_from_cam.shape == (T, 4, 4)
    assert r.dynamic_mask.shape == (T, H, W) and r.dynamic_mask.dtype == bool
    np.testing.assert_array_equal(r.world_from_cam[0], np.eye(4))
    assert is_rotation(r.world_from_cam[:, :3, :3]).all()
    K = r.intrinsics[0]
    assert 0.8 * W <= K[0, 0] <= 1.2 * W and K[0, 0] == K[1, 1]
    assert abs(K[0, 2] - (W - 1) / 2) <= 0.03 * W and abs(K[1, 2] - (H - 1) / 2) <= 0.03 * H
    assert (r.intrinsics == K).all()


def test_deterministic_per_seed_and_different_across_seeds(video):
    again = render(make_scene(seed=7, n_frames=T, height=H, width=W))
    np.testing.assert_array_equal(again.frames, video.frames)
    for name in ("depth", "valid", "intrinsics", "world_from_cam", "dynamic_mask"):
        np.testing.assert_array_equal(getattr(again.geometry, name), getattr(video.geometry, name), err_msg=name)
    assert again.geometry.meta == video.geometry.meta
    other = render(make_scene(seed=8, n_frames=T, height=H, width=W))
    assert not np.array_equal(other.frames, video.frames)
    assert not np.allclose(other.geometry.world_from_cam, video.geometry.world_from_cam)


def test_content_sky_ground_motion(video):
    r = video.geometry
    sky = np.isinf(r.depth)
    assert not np.isnan(r.depth).any()
    finite = r.depth[~sky]
    assert (finite > 0).all() and finite.max() < 40
    # sky in the upper part of every frame, none in the bottom row (ground there)
    assert (sky[:, : H // 4].mean(axis=(1, 2)) > 0.3).all()
    assert not sky[:, -1].any()
    assert (sky.mean(axis=(1, 2)) < 0.7).all()
    # moving objects are visible and move
    assert r.dynamic_mask.any(axis=(1, 2)).all()
    assert not np.array_equal(r.dynamic_mask[0], r.dynamic_mask[-1])
    assert not (r.dynamic_mask & sky).any()
    # the camera rotates and translates, smoothly
    total_rot = rotation_angle_deg(r.world_from_cam[-1, :3, :3])
    assert 5 < total_rot < 60
    assert np.linalg.norm(r.world_from_cam[-1, :3, 3]) > 1.0
    step_rot = rotation_angle_deg(np.swapaxes(r.world_from_cam[:-1, :3, :3], 1, 2) @ r.world_from_cam[1:, :3, :3])
    assert step_rot.max() < 6
    # textured: frames are not flat colour
    assert video.frames.reshape(T, -1, 3).std(axis=1).mean() > 20


def test_points_reproject_to_their_pixels_in_every_frame(rendered):
    """GT depth → world points (via K and world_from_cam) → project into the same camera = the pixel."""
    r = rendered
    Xw = r.points_world()
    v, u = np.mgrid[0:H, 0:W]
    for i in (0, T // 2, T - 1):
        Xc = transform_points(invert_pose(r.world_from_cam[i]), Xw[i])
        uv, z = project_points(Xc, r.intrinsics[i])
        ok = np.isfinite(r.depth[i])
        np.testing.assert_allclose(uv[ok][:, 0], u[ok], atol=1e-3)
        np.testing.assert_allclose(uv[ok][:, 1], v[ok], atol=1e-3)
        np.testing.assert_allclose(z[ok], r.depth[i][ok], rtol=1e-6)


def test_static_points_are_consistent_across_frames(rendered):
    """A static surface point seen in frame 0 projects, in a later frame, onto a pixel whose depth agrees."""
    r = rendered
    Xw = r.points_world()[0]
    sel = np.isfinite(r.depth[0]) & ~r.dynamic_mask[0]
    j = T // 4
    Xc = transform_points(invert_pose(r.world_from_cam[j]), Xw[sel])
    uv, z = project_points(Xc, r.intrinsics[j])
    ui, vi = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    inside = (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H) & (z > 0)
    d_other = r.depth[j][vi[inside], ui[inside]]
    rel = np.abs(d_other - z[inside]) / z[inside]
    # visible (not occluded, not at an edge) points agree to rounding of the pixel position
    assert inside.mean() > 0.5
    assert np.median(rel) < 0.01
    assert (rel < 0.05).mean() > 0.8


def test_ground_truth_round_trip(rendered, tmp_path):
    d = write_ground_truth(tmp_path / "clip.gt", rendered)
    gt = read_ground_truth(d)
    np.testing.assert_array_equal(gt.depth, rendered.depth)
    np.testing.assert_array_equal(gt.intrinsics, rendered.intrinsics)
    np.testing.assert_array_equal(gt.world_from_cam, rendered.world_from_cam)
    np.testing.assert_array_equal(gt.dynamic_mask, rendered.dynamic_mask)
    assert gt.fps == rendered.fps and (gt.n_frames, gt.height, gt.width) == (T, H, W)
    assert gt.meta["synthetic"] is True and gt.meta["seed"] == 7 and gt.meta["format_version"] == 1
    assert "world_from_cam" in gt.meta["conventions"]
    # rewriting over an existing directory works and stays readable
    write_ground_truth(d, gt)
    np.testing.assert_array_equal(read_ground_truth(d).depth, rendered.depth)


def test_find_ground_truth(tmp_path, rendered):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert ground_truth_dir(video) == tmp_path / "clip.gt"
    assert find_ground_truth(video) is None
    assert find_ground_truth(None) is None
    write_ground_truth(tmp_path / "clip.gt", rendered)
    assert find_ground_truth(video) == tmp_path / "clip.gt"
    assert find_ground_truth(str(video)) == tmp_path / "clip.gt"


@pytest.mark.parametrize(
    "breakage, fragment",
    [
        ("missing_dir", "does not exist"),
        ("no_meta", "meta.json: missing"),
        ("bad_json", "meta.json: not valid JSON"),
        ("wrong_format", "not a geo4d-ground-truth"),
        ("no_depth", "depth.npy: missing"),
        ("garbage_depth", "depth.npy: not a readable"),
        ("nan_depth", "depth.npy: depth must be"),
        ("short_poses", "world_from_cam.npy: expected shape"),
        ("pose0_not_identity", "frame 0 must be the identity"),
        ("mask_not_bool", "dynamic_mask.npy: expected dtype bool"),
        ("meta_mismatch", "n_frames=99"),
    ],
)
def test_malformed_ground_truth_names_the_file(rendered, tmp_path, breakage, fragment):
    d = write_ground_truth(tmp_path / "x.gt", rendered)
    if breakage == "missing_dir":
        d = tmp_path / "nope.gt"
    elif breakage == "no_meta":
        (d / "meta.json").unlink()
    elif breakage == "bad_json":
        (d / "meta.json").write_text("{not json")
    elif breakage == "wrong_format":
        (d / "meta.json").write_text(json.dumps({"format": "something-else"}))
    elif breakage == "no_depth":
        (d / "depth.npy").unlink()
    elif breakage == "garbage_depth":
        (d / "depth.npy").write_bytes(b"garbage")
    elif breakage == "nan_depth":
        dep = rendered.depth.copy()
        dep[0, 0, 0] = np.nan
        np.save(d / "depth.npy", dep)
    elif breakage == "short_poses":
        np.save(d / "world_from_cam.npy", rendered.world_from_cam[:-1])
    elif breakage == "pose0_not_identity":
        P = rendered.world_from_cam.copy()
        P[0, 0, 3] = 1.0
        np.save(d / "world_from_cam.npy", P)
    elif breakage == "mask_not_bool":
        np.save(d / "dynamic_mask.npy", rendered.dynamic_mask.astype(np.uint8))
    elif breakage == "meta_mismatch":
        meta = json.loads((d / "meta.json").read_text())
        meta["n_frames"] = 99
        (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as exc:
        read_ground_truth(d)
    msg = str(exc.value)
    assert fragment in msg and str(d) in msg and "\n" not in msg


def test_video_decodes_to_the_right_frames(video, tmp_path):
    import av

    rendered = video
    path = write_video(tmp_path / "v" / "clip.mp4", rendered.frames, fps=10)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert float(stream.average_rate) == pytest.approx(10.0)
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    assert len(decoded) == T
    assert decoded[0].shape == (H, W, 3)
    diff = np.stack(decoded).astype(float) - rendered.frames.astype(float)
    psnr = 10 * np.log10(255.0 ** 2 / np.mean(diff ** 2))
    # lossy (crf 18, chroma subsampled 2×2 on small, saturated textures) but the same pictures
    assert psnr > 24 and np.median(np.abs(diff)) <= 4, (psnr, np.median(np.abs(diff)))
    assert np.abs(diff.mean(axis=(0, 1, 2))).max() < 3  # no colour shift


def test_write_video_rejects_odd_sizes_and_bad_dtype(tmp_path):
    with pytest.raises(InputError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32))


def test_make_scene_rejects_bad_arguments():
    with pytest.raises(InputError, match="n_frames"):
        make_scene(0, n_frames=0)
    with pytest.raises(InputError, match="seed"):
        make_scene(-1)


def test_cli_synth_writes_videos_and_ground_truth(tmp_path, capsys):
    from geo4d_cli import main
    from geo4d.video import read_video

    out = tmp_path / "data"
    rc = main(["synth", str(out), "--videos", "2", "--frames", "6", "--height", "32", "--width", "48", "--seed", "5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "synthetic" in printed.lower()
    for i, seed in ((0, 5), (1, 6)):
        video = out / f"synthetic_{i:03d}.mp4"
        frames, meta = read_video(video)
        assert frames.shape == (6, 32, 48, 3)
        gt = read_ground_truth(find_ground_truth(video))
        assert gt.depth.shape == (6, 32, 48) and gt.meta["seed"] == seed
        ref = render(make_scene(seed, 6, 32, 48))
        np.testing.assert_array_equal(gt.depth, ref.geometry.depth)


def test_cli_synth_bad_arguments(tmp_path, capsys):
    from geo4d_cli import main

    assert main(["synth", str(tmp_path / "o"), "--height", "33"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "even" in err and len(err.strip().splitlines()) == 1
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["synth", str(f)]) == 2
    assert str(f) in capsys.readouterr().err
