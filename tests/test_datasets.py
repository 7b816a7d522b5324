"""Benchmark readers: format round trips, malformed files, layouts and the protocols' subsets."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.cameras import invert_pose
from geo4d.datasets import list_sequences, load_sequence
from geo4d.datasets.bonn import write_bonn_sequence
from geo4d.datasets.formats import (
    KITTI_DEPTH_SCALE,
    TUM_DEPTH_SCALE,
    read_cam,
    read_depth_png,
    read_dpt,
    read_image,
    resize_depth_to,
    resize_image,
    write_cam,
    write_depth_png,
    write_dpt,
    write_image,
)
from geo4d.datasets.kitti import write_kitti_sequence
from geo4d.datasets.sintel import write_sintel_sequence
from geo4d.datasets.tum import associate_greedy, write_tum_sequence
from geo4d.errors import InputError
from geo4d.geometry import Geometry


def _poses(rng, n):
    from scipy.spatial.transform import Rotation

    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = Rotation.from_rotvec(rng.normal(size=(n, 3)) * 0.3).as_matrix()
    T[:, :3, 3] = rng.normal(size=(n, 3))
    return T


# ---- formats ----------------------------------------------------------------------------------------
def test_dpt_round_trip_exact(tmp_path):
    d = np.random.default_rng(0).uniform(0.1, 1e3, (7, 5)).astype(np.float32)
    d[0, 0] = np.inf
    write_dpt(tmp_path / "a.dpt", d)
    raw = (tmp_path / "a.dpt").read_bytes()
    assert len(raw) == 12 + 4 * 35
    assert np.frombuffer(raw[:4], "<f4")[0] == np.float32(202021.25)
    assert tuple(np.frombuffer(raw[4:12], "<i4")) == (5, 7)  # width, height
    back = read_dpt(tmp_path / "a.dpt")
    assert back.dtype == np.float32 and np.array_equal(back, d)


def test_dpt_malformed_files_name_the_file(tmp_path):
    d = np.ones((3, 4), np.float32)
    write_dpt(tmp_path / "ok.dpt", d)
    raw = (tmp_path / "ok.dpt").read_bytes()
    (tmp_path / "magic.dpt").write_bytes(np.float32(1.5).tobytes() + raw[4:])
    (tmp_path / "short.dpt").write_bytes(raw[:-4])
    (tmp_path / "header.dpt").write_bytes(raw[:4] + np.asarray([-3, 4], "<i4").tobytes() + raw[12:])
    (tmp_path / "tiny.dpt").write_bytes(b"ab")
    with pytest.raises(InputError, match=r"magic\.dpt: bad magic number"):
        read_dpt(tmp_path / "magic.dpt")
    with pytest.raises(InputError, match=r"short\.dpt: wrong size: header says 4×3 \(60 bytes\), file has 56"):
        read_dpt(tmp_path / "short.dpt")
    with pytest.raises(InputError, match=r"header\.dpt: impossible size"):
        read_dpt(tmp_path / "header.dpt")
    with pytest.raises(InputError, match=r"tiny\.dpt: too short"):
        read_dpt(tmp_path / "tiny.dpt")
    with pytest.raises(InputError, match=r"none\.dpt: no such file"):
        read_dpt(tmp_path / "none.dpt")


def test_cam_round_trip_exact(tmp_path):
    rng = np.random.default_rng(1)
    K = np.array([[1120.0, 0.0, 511.5], [0.0, 1120.0, 217.5], [0.0, 0.0, 1.0]])
    E = _poses(rng, 1)[0]
    write_cam(tmp_path / "f.cam", K, E[:3])
    K2, E2 = read_cam(tmp_path / "f.cam")
    assert np.array_equal(K2, K) and np.array_equal(E2, E)
    assert (tmp_path / "f.cam").stat().st_size == 4 + 21 * 8
    raw = (tmp_path / "f.cam").read_bytes()
    (tmp_path / "bad.cam").write_bytes(raw[:-8])
    with pytest.raises(InputError, match=r"bad\.cam: wrong size"):
        read_cam(tmp_path / "bad.cam")
    (tmp_path / "magic.cam").write_bytes(b"\0\0\0\0" + raw[4:])
    with pytest.raises(InputError, match=r"magic\.cam: bad magic number"):
        read_cam(tmp_path / "magic.cam")


@pytest.mark.parametrize("scale", [TUM_DEPTH_SCALE, KITTI_DEPTH_SCALE])
def test_depth_png_round_trip_exact(tmp_path, scale):
    rng = np.random.default_rng(2)
    raw = rng.integers(1, 65536, size=(9, 13))
    raw[0, :4] = 0  # missing
    depth = raw / scale
    write_depth_png(tmp_path / "d.png", depth, scale)
    from PIL import Image

    with Image.open(tmp_path / "d.png") as im:
        stored = np.asarray(im)
    assert np.array_equal(stored.astype(np.int64), raw)  # exactly the 16-bit values
    back = read_depth_png(tmp_path / "d.png", scale)
    assert back.dtype == np.float32 and np.array_equal(back, depth.astype(np.float32))
    assert (back[0, :4] == 0).all()
    with pytest.raises(ValueError, match="exceeds the 16-bit range"):
        write_depth_png(tmp_path / "e.png", np.full((2, 2), 70000.0 / scale), scale)


def test_depth_png_malformed(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "eight.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match=r"eight\.png: not a 16-bit depth PNG"):
        read_depth_png(tmp_path / "eight.png", 5000.0)
    with pytest.raises(InputError, match=r"junk\.png: not a readable image"):
        read_depth_png(tmp_path / "junk.png", 5000.0)
    with pytest.raises(InputError, match=r"junk\.png: not a readable image"):
        read_image(tmp_path / "junk.png")


def test_image_round_trip_and_protocol_resize(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    write_image(tmp_path / "f.png", rgb)
    assert np.array_equal(read_image(tmp_path / "f.png"), rgb)
    small = resize_image(rgb, (12, 10))  # (W, H), aspect ratio not kept
    assert small.shape == (10, 12, 3)
    assert np.array_equal(small, np.asarray(Image.fromarray(rgb).resize((12, 10), Image.Resampling.LANCZOS)))
    big = read_image(tmp_path / "f.png", size=(60, 25))
    assert np.array_equal(big, np.asarray(Image.fromarray(rgb).resize((60, 25), Image.Resampling.BICUBIC)))


def test_resize_depth_to_gt_resolution():
    d = np.full((2, 4, 6), 3.0, np.float32)
    up = resize_depth_to(d, (8, 12))
    assert up.shape == (2, 8, 12) and np.allclose(up, 3.0)
    ramp = np.tile(np.arange(6, dtype=np.float32), (1, 4, 1))
    up = resize_depth_to(ramp, (4, 12))
    assert np.all(np.diff(up[0, 0]) >= -1e-5)  # monotone stays (nearly) monotone
    assert up[0, 0, 0] < 0.5 and up[0, 0, -1] > 4.5


# ---- layouts -----------------------------------------------------------------------------------------
def _frames(rng, T, H=8, W=10):
    return rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)


def test_sintel_layout(tmp_path):
    rng = np.random.default_rng(4)
    T, H, W = 4, 8, 10
    frames = _frames(rng, T, H, W)
    depth = rng.uniform(0.5, 90, (T, H, W)).astype(np.float32)
    K = np.array([[20.0, 0, 4.5], [0, 20.0, 3.5], [0, 0, 1]])
    pose = _poses(rng, T)
    root = tmp_path / "training"
    write_sintel_sequence(root, "alley_2", frames, depth, K, pose)
    write_sintel_sequence(root, "bamboo_1", frames[:3], depth[:3], K, pose[:3])
    assert list_sequences("sintel", tmp_path) == ["alley_2", "bamboo_1"]  # parent of training/ works
    assert list_sequences("sintel", root, "pose") == ["alley_2"]
    seq = load_sequence("sintel", root, "alley_2")
    assert seq.n_frames == T and seq.eval_size == (576, 256) and seq.depth_eval and seq.pose_eval
    assert not load_sequence("sintel", root, "bamboo_1").pose_eval
    assert np.array_equal(seq.read_frames(size=None), frames)
    assert seq.read_frames().shape == (T, 256, 576, 3)
    d, valid = seq.read_depth()
    assert np.array_equal(d, depth) and valid.all()
    assert np.allclose(seq.world_from_cam, pose, atol=1e-12)
    assert np.array_equal(seq.intrinsics, np.tile(K, (T, 1, 1)))
    assert list(seq.timestamps) == [0, 1, 2, 3]
    # a missing camera file is reported with the directory
    (root / "camdata_left" / "alley_2" / "frame_0004.cam").unlink()
    with pytest.raises(InputError, match=r"camdata_left/alley_2: 3 \.cam files for 4 frames"):
        load_sequence("sintel", root, "alley_2")


def test_sintel_synthetic_truth_rescales_intrinsics(tmp_path):
    rng = np.random.default_rng(5)
    T, H, W = 2, 8, 10
    depth = np.full((T, H, W), 5.0, np.float32)
    depth[:, 0] = 0.0  # invalid row
    K = np.array([[20.0, 0, 4.5], [0, 16.0, 3.5], [0, 0, 1]])
    write_sintel_sequence(tmp_path, "s", _frames(rng, T, H, W), depth, K, _poses(rng, T))
    truth = load_sequence("sintel", tmp_path, "s").synthetic_truth(size=(20, 4))
    assert isinstance(truth, Geometry) and truth.depth.shape == (T, 4, 20)
    assert np.isinf(truth.depth[:, 0]).all() and (truth.depth[:, 1:] == 5.0).all()
    assert np.array_equal(truth.valid, np.isfinite(truth.depth))  # the ground-truth convention
    assert truth.dynamic_mask is not None and not truth.dynamic_mask.any() and truth.fps == 24.0
    # the image centre stays the centre; focal lengths scale with the axes
    assert np.allclose(truth.intrinsics[0], [[40.0, 0, 9.5], [0, 8.0, 1.5], [0, 0, 1]])
    assert np.allclose(truth.world_from_cam[0], np.eye(4), atol=1e-12)


def test_bonn_prepared_and_raw_layouts(tmp_path):
    rng = np.random.default_rng(6)
    n = 145
    frames = _frames(rng, n, 4, 6)
    depth = rng.integers(1, 60000, (n, 4, 6)) / TUM_DEPTH_SCALE
    stamps = 1000.0 + np.arange(n) / 30.0
    pose = _poses(rng, n)
    write_bonn_sequence(tmp_path / "raw", "crowd2", frames, depth, stamps, pose, prepared=False)
    write_bonn_sequence(tmp_path / "prep", "balloon2", frames[30:140], depth[30:140], stamps[30:140], pose[30:140])
    for root, name in ((tmp_path / "raw", "crowd2"), (tmp_path / "prep", "balloon2")):
        assert list_sequences("bonn", root) == [name]
        seq = load_sequence("bonn", root, name)
        assert seq.n_frames == 110 and seq.eval_size == (512, 384)
        assert np.array_equal(seq.read_frames(size=None), frames[30:140])
        d, valid = seq.read_depth()
        assert np.array_equal(d, depth[30:140].astype(np.float32)) and valid.all()
        assert np.allclose(seq.world_from_cam, pose[30:140], atol=1e-12)
        assert np.array_equal(seq.timestamps, stamps[30:140])


def test_tum_greedy_association_matches_the_benchmark_rule():
    rng = np.random.default_rng(7)
    a = np.sort(rng.uniform(0, 5, 120))
    b = np.sort(rng.uniform(0, 5, 400))
    b[10] = a[5] + 0.004
    b[11] = a[5] - 0.004  # a tie in |Δt|
    ours = associate_greedy(a, b, 0.02)
    # brute force: every pair, sorted by (diff, a, b), greedy unique
    cand = sorted((abs(x - y), x, y, i, j) for i, x in enumerate(a) for j, y in enumerate(b) if abs(x - y) < 0.02)
    ua, ub, ref = set(), set(), []
    for _, _, _, i, j in cand:
        if i not in ua and j not in ub:
            ua.add(i)
            ub.add(j)
            ref.append((i, j))
    ref.sort(key=lambda p: a[p[0]])
    assert ours == ref and len(ours) > 50


def test_tum_raw_layout_subset(tmp_path):
    rng = np.random.default_rng(8)
    n_rgb = 300
    t_rgb = 100.0 + np.arange(n_rgb) / 30.0
    t_gt = 100.0 + np.arange(1200) / 100.0 + 0.001
    pose = _poses(rng, len(t_gt))
    d = tmp_path / "rgbd_dataset_freiburg3_walking_xyz"
    write_tum_sequence(tmp_path, d.name, _frames(rng, n_rgb, 2, 3), t_rgb, pose[:n_rgb], prepared=False)
    # replace the ground truth by a denser one with other stamps
    from geo4d.metrics.trajectory import Trajectory, write_tum_trajectory

    write_tum_trajectory(d / "groundtruth.txt", Trajectory.from_poses(t_gt, pose))
    seq = load_sequence("tum", tmp_path, d.name)
    assert seq.n_frames == 90 and not seq.depth_eval and seq.pose_eval and not seq.has_depth
    pairs = associate_greedy(t_rgb, t_gt, 0.02)[::3][:90]
    assert [p.name for p in seq.frame_paths] == [f"{t_rgb[i]:.6f}.png" for i, _ in pairs]
    assert np.allclose(seq.world_from_cam, pose[[j for _, j in pairs]], atol=1e-12)
    assert list_sequences("tum", tmp_path, "depth") == []


def test_tum_prepared_layout_and_mismatch(tmp_path):
    rng = np.random.default_rng(9)
    t = 5.0 + np.arange(6) / 10.0
    write_tum_sequence(tmp_path, "seq", _frames(rng, 6, 2, 3), t, _poses(rng, 6))
    seq = load_sequence("tum", tmp_path, "seq")
    assert seq.n_frames == 6 and np.array_equal(seq.timestamps, t)
    (tmp_path / "seq" / "rgb_90" / f"{t[0]:.6f}.png").unlink()
    with pytest.raises(InputError, match=r"groundtruth_90\.txt: 6 poses for 5 frames"):
        load_sequence("tum", tmp_path, "seq")


def test_kitti_prepared_layout(tmp_path):
    rng = np.random.default_rng(10)
    depth = rng.integers(0, 20000, (3, 5, 7)) / KITTI_DEPTH_SCALE
    frames = _frames(rng, 3, 5, 7)
    root = tmp_path / "depth_selection" / "val_selection_cropped"
    write_kitti_sequence(root, "2011_09_26_drive_0002_sync", frames, depth)
    assert list_sequences("kitti", tmp_path) == ["2011_09_26_drive_0002_sync"]
    assert list_sequences("kitti", tmp_path, "pose") == []
    seq = load_sequence("kitti", tmp_path, "2011_09_26_drive_0002_sync")
    d, valid = seq.read_depth()
    assert np.array_equal(d, depth.astype(np.float32)) and np.array_equal(valid, depth > 0)
    assert seq.eval_size == (640, 192) and seq.depth_eval and not seq.pose_eval
    (root / "image_gathered" / "2011_09_26_drive_0002_sync" / "0000000005.png").unlink()
    with pytest.raises(InputError, match="2 frames for 3 ground-truth depth maps"):
        load_sequence("kitti", tmp_path, "2011_09_26_drive_0002_sync")


def test_kitti_raw_layout_takes_first_110_annotated_maps(tmp_path):
    from geo4d.datasets.formats import write_depth_png as wd

    rng = np.random.default_rng(12)
    drive = "2011_09_26_drive_0002_sync"
    gdir = tmp_path / "val" / drive / "proj_depth" / "groundtruth" / "image_02"
    idir = tmp_path / "2011_09_26" / drive / "image_02" / "data"
    for i in range(5, 5 + 112):
        wd(gdir / f"{i:010d}.png", np.full((2, 3), 1.0 + i / 256.0), KITTI_DEPTH_SCALE)
    for i in range(0, 5 + 112):
        write_image(idir / f"{i:010d}.png", rng.integers(0, 256, (2, 3, 3), dtype=np.uint8))
    assert list_sequences("kitti", tmp_path) == [drive]
    seq = load_sequence("kitti", tmp_path, drive)
    assert seq.n_frames == 110
    assert [p.name for p in seq.frame_paths] == [f"{i:010d}.png" for i in range(5, 115)]
    assert all(p.parent == idir for p in seq.frame_paths)
    d, _ = seq.read_depth()
    assert d[0, 0, 0] == np.float32(1.0 + 5 / 256.0)
    (idir / "0000000007.png").unlink()
    with pytest.raises(InputError, match=r"raw image 2011_09_26/.*/0000000007\.png not found"):
        load_sequence("kitti", tmp_path, drive)


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(InputError, match="unknown 'nyu'"):
        list_sequences("nyu", tmp_path)
    with pytest.raises(InputError, match="not a Sintel training directory"):
        list_sequences("sintel", tmp_path)
    with pytest.raises(InputError, match="no rgbd_bonn_"):
        list_sequences("bonn", tmp_path)


def test_sintel_camera_is_world_to_camera(tmp_path):
    """A camera at centre c looking down +z: the file holds cam_from_world, the reader returns its inverse."""
    rng = np.random.default_rng(11)
    pose = np.tile(np.eye(4), (1, 1, 1))
    pose[0, :3, 3] = [1.0, 2.0, 3.0]
    write_sintel_sequence(tmp_path, "s", _frames(rng, 1), np.ones((1, 8, 10), np.float32), np.eye(3), pose)
    _, E = read_cam(tmp_path / "camdata_left" / "s" / "frame_0001.cam")
    assert np.allclose(E[:3, 3], [-1.0, -2.0, -3.0])  # t of world→camera
    assert np.allclose(invert_pose(E), pose[0])
