"""`geo4d export --format …`: each standard format read back by a library that did not write it.

One small store (one fused video at 20 frames, 48×64, from the synthetic predictor, and one only
decoded) is exported in every format once; the tests compare what the consuming tools read with the
fused geometry in the store.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from conftest import write_synthetic_videos
from geo4d_cli import main

ALL = ["colmap,nerfstudio", "--format", "tum", "--format", "ply,glb,depth"]
FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def _run(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from pipeline import stages
    from storage.store import Store

    d = tmp_path_factory.mktemp("fmt")
    s = Store(d / "s.zarr")
    for i, path in enumerate(write_synthetic_videos(d, [70, 71])):
        stages.decode_stage(s, str(path), video_id=f"v{i}")
    stages.windows_stage(s, "v0", {"kind": "synthetic"})  # v1 stays only decoded
    stages.fuse_stage(s, "v0")
    stages.evaluate_stage(s, "v0")
    return s


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    rc, printed = _run(["export", store.location, str(out), "--format", *ALL])
    return out, printed, rc


@pytest.fixture(scope="module")
def fused(store):
    return store.read_fused("v0")


def _confident(fused) -> np.ndarray:
    """(T, H, W) the pixels every cloud keeps: valid, at least the 10 % quantile of valid confidence."""
    thr = np.quantile(fused.confidence[fused.valid], 0.1)
    return fused.valid & (fused.confidence >= thr)


def test_one_line_per_video_and_format_with_provenance(exported, store):
    out, printed, rc = exported
    assert rc == 0
    finished = store.stage_record("v0", "fuse")["finished_at"]
    for fmt in ("colmap", "nerfstudio", "tum", "ply", "glb", "depth"):
        assert f"exported v0 {fmt}: " in printed and f"skip v1 {fmt}: fuse stage not complete" in printed
        side = json.loads((out / fmt / "v0" / "export.json").read_text())
        assert side["format"] == fmt and side["fused_finished_at"] == finished
        assert side["predictor"].startswith("synthetic") and "SYNTHETIC" in side["note"]
        assert (side["n_frames"], side["height"], side["width"]) == (20, 48, 64)
        assert not (out / fmt / "v1").exists()
    assert "(SYNTHETIC predictor)" in printed
    assert not list(out.glob("*/*.partial")) and not (out / "index.parquet").exists()


def test_colmap_model_read_by_pycolmap_and_by_hand(exported, fused):
    import pycolmap

    root = exported[0] / "colmap" / "v0"
    rec = pycolmap.Reconstruction(str(root / "sparse/0"))
    assert rec.num_cameras() == rec.num_images() == 20
    w2c = fused.world_from_cam.astype(np.float64)
    for image in rec.images.values():
        k = int(image.name.removeprefix("frame_").removesuffix(".png"))
        assert np.allclose(np.linalg.inv(np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]])), w2c[k], atol=1e-5)
        cam = rec.cameras[image.camera_id]
        K = fused.intrinsics[k]
        assert cam.model.name == "PINHOLE" and (cam.width, cam.height) == (64, 48)
        # COLMAP's pixel centres are at half-integers: its principal point is ours + 0.5.
        assert np.allclose(cam.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], atol=1e-4)
        with Image.open(root / "images" / image.name) as im:
            assert im.size == (64, 48)
    assert rec.num_points3D() == int(_confident(fused).sum()) <= 100_000
    # images.txt by hand: IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, then a (here empty) points line.
    lines = [ln for ln in (root / "sparse/0/images.txt").read_text().splitlines() if not ln.startswith("#")]
    poses = {}
    for ln in lines[::2]:
        f = ln.split()
        R = Rotation.from_quat([float(x) for x in f[1:5]], scalar_first=True).as_matrix()
        poses[f[9]] = np.linalg.inv(np.block([[R, np.array(f[5:8], float)[:, None]], [np.zeros((1, 3)), 1]]))
    assert sorted(poses) == [f"frame_{k:05d}.png" for k in range(20)]
    for k in range(20):
        assert np.allclose(poses[f"frame_{k:05d}.png"], w2c[k], atol=1e-5)


def test_nerfstudio_transforms_in_opengl_axes(exported, fused, store):
    import trimesh

    root = exported[0] / "nerfstudio" / "v0"
    meta = json.loads((root / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and len(meta["frames"]) == 20
    frames = store.read_frames("v0")
    unit = meta["depth_unit_scale_factor"]
    for k, f in enumerate(meta["frames"]):
        c2w = np.array(f["transform_matrix"])
        w2c = fused.world_from_cam[k]
        # OpenGL camera: x right (same), y up (= -OpenCV y), z back (= -OpenCV viewing direction).
        assert np.allclose(c2w[:3, 0], w2c[:3, 0], atol=1e-6) and np.allclose(c2w[:3, 1], -w2c[:3, 1], atol=1e-6)
        assert np.allclose(c2w[:3, 2], -w2c[:3, 2], atol=1e-6) and np.allclose(c2w[:3, 3], w2c[:3, 3], atol=1e-6)
        K = fused.intrinsics[k]
        assert np.allclose([f["fl_x"], f["fl_y"], f["cx"], f["cy"]], [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5])
        with Image.open(root / f["file_path"]) as im:
            assert im.size == (f["w"], f["h"]) == (64, 48) and np.array_equal(np.asarray(im), frames[k])
        with Image.open(root / f["depth_file_path"]) as im:
            assert im.mode == "I;16"
            d = np.asarray(im).astype(np.float64) * unit
        valid = fused.valid[k]
        assert np.all(d[~valid] == 0) and np.allclose(d[valid], fused.depth[k][valid], atol=0.5 * unit + 1e-6)
    seeds = trimesh.load(root / meta["ply_file_path"])
    assert len(seeds.vertices) == int(_confident(fused).sum())


def test_tum_read_by_evo_and_accepted_by_metrics_poses(exported, fused, store, tmp_path):
    from evo.tools import file_interface

    from geo4d.metrics.trajectory import Trajectory, write_tum_trajectory
    from storage.ground_truth import read_ground_truth

    path = exported[0] / "tum" / "v0" / "trajectory.tum"
    traj = file_interface.read_tum_trajectory_file(str(path))
    times = store.frame_times("v0")
    expected = times if times is not None else np.arange(20) / 10.0
    assert np.allclose(traj.timestamps, expected) and len(traj.poses_se3) == 20
    assert np.allclose(np.stack(traj.poses_se3), fused.world_from_cam, atol=1e-6)
    gt = read_ground_truth(Path(store.video_info("v0").source).with_suffix(".gt"))
    write_tum_trajectory(tmp_path / "gt.tum", Trajectory.from_poses(traj.timestamps, gt.world_from_cam))
    rc, printed = _run(["metrics", "poses", "--est", str(path), "--gt", str(tmp_path / "gt.tum"), "--json"])
    m = json.loads(printed)
    assert rc == 0 and m["n_associated"] == 20
    evaluated = store.stage_record("v0", "evaluate")["metrics"]
    assert np.isclose(m["ate"], evaluated["ate"], rtol=1e-3, atol=1e-6)


def test_ply_read_by_trimesh_points_and_colours_equal(exported, fused, store):
    import trimesh

    cloud = trimesh.load(exported[0] / "ply" / "v0" / "points.ply")
    keep = _confident(fused)  # under the budget every confident point, in frame then row-major order
    assert np.array_equal(np.asarray(cloud.vertices, np.float32), fused.points[keep])
    assert np.array_equal(np.asarray(cloud.colors)[:, :3], store.read_frames("v0")[keep])


def test_point_budget_is_spread_evenly_over_frames(store, fused, tmp_path):
    import trimesh

    rc, printed = _run(["export", store.location, str(tmp_path), "--format", "ply", "--max-points", "1000"])
    assert rc == 0 and "exported v0 ply: 1000 points" in printed
    cloud = trimesh.load(tmp_path / "ply" / "v0" / "points.ply")
    assert len(cloud.vertices) == 1000
    T, H, W = fused.depth.shape
    # 50 points per frame, frame after frame: each block of 50 vertices is found among its frame's
    # pixels (a static point may repeat exactly in another frame, so lookups stay within one frame)
    vertices, colors = np.asarray(cloud.vertices, np.float32).reshape(T, 50, 3), np.asarray(cloud.colors)[:, :3]
    idx = []
    for k in range(T):
        index = {p.tobytes(): i for i, p in enumerate(fused.points[k].reshape(-1, 3))}
        idx += [k * H * W + index[p.tobytes()] for p in vertices[k]]
    idx = np.array(idx)
    assert np.all(_confident(fused).reshape(-1)[idx])
    assert np.array_equal(colors, store.read_frames("v0").reshape(-1, 3)[idx])


def _accessor(gltf, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    raw = gltf.binary_blob()[view.byteOffset + (acc.byteOffset or 0):]
    width = {"VEC3": 3, "VEC4": 4, "SCALAR": 1}[acc.type]
    dtype = {5126: np.float32, 5121: np.uint8}[acc.componentType]
    return np.frombuffer(raw, dtype=dtype, count=acc.count * width).reshape(acc.count, width)


def test_glb_read_by_pygltflib(exported, fused):
    import pygltflib

    gltf = pygltflib.GLTF2().load(str(exported[0] / "glb" / "v0" / "scene.glb"))
    prims = {m.name: m.primitives[0] for m in gltf.meshes}
    assert prims["points"].mode == pygltflib.POINTS
    points = _accessor(gltf, prims["points"].attributes.POSITION)
    assert len(points) == int(_confident(fused).sum())
    # glTF is y-up: our (x, y, z) is written as (x, -y, -z).
    assert np.allclose(points, fused.points[_confident(fused)] * [1, -1, -1], atol=1e-6)
    centres = fused.world_from_cam[:, :3, 3] * [1, -1, -1]
    assert prims["camera_frusta"].mode == pygltflib.LINES
    frusta = _accessor(gltf, prims["camera_frusta"].attributes.POSITION)
    assert frusta.shape == (20 * 16, 3) and np.allclose(frusta[::16], centres, atol=1e-6)
    # The first ray of frame k reaches the top-left image corner: it projects to pixel (-0.5, -0.5).
    for k in (0, 7, 19):
        corner = np.linalg.inv(fused.world_from_cam[k]) @ np.r_[frusta[16 * k + 1] * [1, -1, -1], 1]
        uv = fused.intrinsics[k] @ (corner[:3] / corner[2])
        assert np.allclose(uv[:2], [-0.5, -0.5], atol=1e-3)
    path = _accessor(gltf, prims["camera_path"].attributes.POSITION)
    assert prims["camera_path"].mode == pygltflib.LINES and path.shape == (2 * 19, 3)
    assert np.allclose(path[::2], centres[:-1], atol=1e-6) and np.allclose(path[1::2], centres[1:], atol=1e-6)
    assert "SYNTHETIC" in json.dumps(gltf.scenes[0].extras)


def test_depth_pngs_recover_depth_within_quantisation(exported, fused):
    root = exported[0] / "depth" / "v0"
    side = json.loads((root / "scale.json").read_text())
    s = side["scale"]
    assert side["invalid"] == 0 and side["units"] and np.isclose(fused.depth[fused.valid].max() * s, 65535)
    for k in range(20):
        with Image.open(root / f"frame_{k:05d}.png") as im:
            assert im.mode == "I;16" and im.size == (64, 48)
            raw = np.asarray(im)
        v = fused.valid[k]
        assert np.all(raw[~v] == 0) and np.all(raw[v] > 0)
        assert np.abs(raw[v] / s - fused.depth[k][v]).max() <= 0.5 / s + 1e-7


def test_depth_npz(store, fused, tmp_path):
    rc, printed = _run(["export", store.location, str(tmp_path), "--format", "depth", "--depth-format", "npz"])
    assert rc == 0 and "exported v0 depth" in printed
    with np.load(tmp_path / "depth" / "v0" / "depth.npz") as z:
        assert z["depth"].dtype == np.float32 and np.array_equal(z["depth"], fused.depth)
        assert np.array_equal(z["confidence"], fused.confidence)
        assert np.allclose(z["intrinsics"], fused.intrinsics) and np.allclose(z["world_from_cam"], fused.world_from_cam)


def test_rerun_keeps_and_an_interrupted_export_never_shows(store, tmp_path, monkeypatch):
    from storage import export

    assert _run(["export", store.location, str(tmp_path), "--format", "ply,tum"])[0] == 0
    before = (tmp_path / "ply/v0/points.ply").read_bytes()
    rc, printed = _run(["export", store.location, str(tmp_path), "--format", "ply,tum"])
    assert rc == 0 and "keep v0 ply: already exported" in printed and "keep v0 tum" in printed

    def broken(v, d, opts):
        (d / "points.ply").write_bytes(b"ply\nhalf")
        raise RuntimeError("interrupted")

    monkeypatch.setitem(export._WRITERS, "ply", broken)
    with pytest.raises(RuntimeError):
        _run(["export", store.location, str(tmp_path), "--format", "ply", "--overwrite"])
    assert (tmp_path / "ply/v0/points.ply").read_bytes() == before  # the complete one stays visible
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "ply/v0")
    monkeypatch.setitem(export._WRITERS, "ply", broken)
    with pytest.raises(RuntimeError):
        _run(["export", store.location, str(tmp_path), "--format", "ply"])
    assert not (tmp_path / "ply/v0").exists()  # only the staged v0.partial, never the final name
    monkeypatch.undo()
    rc, printed = _run(["export", store.location, str(tmp_path), "--format", "ply"])
    assert rc == 0 and (tmp_path / "ply/v0/points.ply").read_bytes() == before
    assert not (tmp_path / "ply/v0.partial").exists()


def test_damaged_video_skipped_in_every_format_checked_once(store, tmp_path, monkeypatch):
    from storage import export
    from storage.store import Store

    path = tmp_path / "s.zarr"
    shutil.copytree(store.location, path)
    depth = Store(path, mode="r").video_array("v0", "fused/depth")
    (path / "videos/v0/fused/depth" / depth.metadata.encode_chunk_key((4, 0, 0))).unlink()
    calls = []
    real = export.damage_reason
    monkeypatch.setattr(export, "damage_reason", lambda s, v: calls.append(v) or real(s, v))
    out = tmp_path / "out"
    rc, printed = _run(["export", str(path), str(out), "--format", "zarr,tum,glb"])
    assert rc == 1 and calls == ["v0"]
    for fmt in ("tum", "glb"):
        assert f"skip v0 {fmt}: damaged, not exported: fused/depth chunk 4: missing" in printed
        assert f"SKIPPED v0 {fmt}: damaged: " in printed and not (out / fmt / "v0").exists()
    assert "skip v0: damaged, not exported" in printed  # the dataset's own line, as before


@pytest.mark.parametrize("argv, words", [
    (["--format", "obj"], "--format: unknown format 'obj' (choose from zarr, colmap"),
    (["--format", "ply", "--max-points", "0"], "--max-points: expected a positive number of points, got 0"),
    (["--format", "tum", "--videos", "nope"], "no video 'nope' to export"),
])
def test_bad_options_are_one_line_errors(store, tmp_path, capsys, argv, words):
    assert main(["export", store.location, str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "tum").exists()


@pytest.fixture(scope="module")
def cropped_store(tmp_path_factory):
    """A fused video whose frames are a 0.5× centre crop of a 96×200 source (the framing a decode with
    ``--resize crop`` records; set by hand because the synthetic predictor needs frames at its ground
    truth's size)."""
    from geo4d.framing import plan_framing
    from pipeline import stages
    from storage.store import Store

    d = tmp_path_factory.mktemp("crop")
    (video,) = write_synthetic_videos(d, [75], width=80, name="c")
    s = Store(d / "s.zarr")
    stages.decode_stage(s, str(video), video_id="c")
    framing = plan_framing((96, 200), (48, 80), "crop")
    assert framing.scaled_size == (48, 100) and framing.offset == (0, 10)
    s._video_group("c").attrs.update({"framing": framing.to_dict()})
    stages.windows_stage(s, "c", {"kind": "synthetic"})
    stages.fuse_stage(s, "c")
    return s


@pytest.mark.parametrize("depth_format", ["png", "npz"])
def test_depth_at_source_resolution(cropped_store, depth_format, tmp_path):
    from geo4d.framing import depth_to_source

    s = cropped_store
    rc, printed = _run(["export", s.location, str(tmp_path), "--format", "depth", "--depth-format", depth_format,
                        "--source-resolution"])
    assert rc == 0, printed
    fused, framing = s.read_fused("c"), s.framing("c")
    expected = depth_to_source(np.where(fused.valid, fused.depth, 0).astype(np.float32), framing)
    root = tmp_path / "depth" / "c"
    if depth_format == "npz":
        with np.load(root / "depth.npz") as z:
            depth, K, conf = z["depth"], z["intrinsics"], z["confidence"]
        assert np.array_equal(depth, expected)
        assert conf.shape == (20, 96, 200) and np.all(conf[:, :, :20] == 0)
    else:
        side = json.loads((root / "scale.json").read_text())
        assert (side["resolution"], side["size"]) == ("source", [96, 200])
        K = np.array(side["intrinsics"])
        with Image.open(root / "frame_00000.png") as im:
            raw = np.asarray(im).astype(np.float64)
        assert raw.shape == (96, 200)
        assert np.abs(raw / side["scale"] - expected[0]).max() <= 0.5 / side["scale"] + 1e-6
    assert expected.shape == (20, 96, 200)
    assert np.all(expected[:, :, :20] == 0) and np.all(expected[:, :, -20:] == 0)  # cropped away: no depth
    assert abs(np.mean(expected[:, :, 20:-20] > 0) - np.mean(fused.valid)) < 0.02  # valid where the network's is
    # K in source pixels: twice the network focal; a network pixel centre maps to its source position
    assert np.allclose(K[:, 0, 0], 2 * fused.intrinsics[:, 0, 0]) and np.allclose(K, s.read_intrinsics_source("c"))
    assert np.allclose((K[:, 0, 2] + 0.5) / 2 - 10, fused.intrinsics[:, 0, 2] + 0.5)


def test_a_source_resolution_export_replaces_a_network_one(cropped_store, tmp_path):
    s = cropped_store
    assert _run(["export", s.location, str(tmp_path), "--format", "depth"])[0] == 0
    rc, printed = _run(["export", s.location, str(tmp_path), "--format", "depth", "--source-resolution"])
    assert rc == 0 and "keep c depth" not in printed  # other settings: rewritten, not kept
    with Image.open(tmp_path / "depth" / "c" / "frame_00000.png") as im:
        assert im.size == (200, 96)
