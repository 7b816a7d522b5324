"""SYNTHETIC archives with known defects (geo4d/synthetic_archive.py, storage/synthetic_archive.py)."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.errors import InputError
from geo4d.synthetic import make_scene, render
from geo4d.synthetic_archive import ArchiveSpec, concatenated_geometry, cut_video, fade_weights, static_camera_video
from storage.ground_truth import read_ground_truth
from storage.synthetic_archive import read_archive, write_archive

H, W = 16, 24


def _frame_change(frames: np.ndarray) -> np.ndarray:
    """(T − 1,) mean absolute change between consecutive frames."""
    f = frames.astype(np.float64)
    return np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))


def test_hard_cuts_are_where_promised():
    v = cut_video([0, 1, 2], [6, 5, 7], H, W)
    assert v.boundaries == [6, 11] and v.shot_ranges == [(0, 6), (6, 11), (11, 18)]
    for seed, (s, e), g in zip([0, 1, 2], v.shot_ranges, v.shots):
        alone = render(make_scene(seed, e - s, H, W))
        np.testing.assert_array_equal(v.frames[s:e], alone.frames)  # a hard cut changes no frame
        np.testing.assert_array_equal(g.depth, alone.geometry.depth)
        np.testing.assert_array_equal(g.world_from_cam[0], np.eye(4))
    change = _frame_change(v.frames)
    jumps = np.argsort(change)[-2:] + 1  # the two largest changes start the new shots
    assert sorted(jumps.tolist()) == v.boundaries


@pytest.mark.parametrize("kind", ["black", "cross"])
def test_fades_are_centred_on_the_boundary(kind):
    k = 5
    hard = cut_video([0, 1], [8, 8], H, W)
    v = cut_video([0, 1], [8, 8], H, W, fade_frames=k, fade_kind=kind)
    b = v.boundaries[0]
    assert b == 8
    changed = np.flatnonzero((v.frames != hard.frames).reshape(16, -1).any(axis=1))
    assert changed.min() >= b - k // 2 and changed.max() <= b + k - k // 2 - 1
    if kind == "black":
        assert v.frames[b].max() == 0  # odd k: the middle frame (the boundary) is black
        brightness = v.frames.reshape(16, -1).mean(axis=1)
        assert np.argmin(brightness) == b
    else:
        w = fade_weights(k)[k // 2 - 1]  # frame b − 1: still mostly shot A, mixed with B's first frame
        want = (1 - w) * hard.frames[b - 1].astype(float) + w * hard.frames[b].astype(float)
        assert np.abs(v.frames[b - 1] - np.clip(want + 0.5, 0, 255).astype(np.uint8)).max() <= 1
    np.testing.assert_array_equal(v.shots[1].depth, hard.shots[1].depth)  # a fade changes colours only


def test_static_camera_video_has_all_poses_equal_and_moving_objects():
    v = static_camera_video(3, 8, H, W)
    P = v.shots[0].world_from_cam
    np.testing.assert_allclose(P, np.repeat(np.eye(4)[None], 8, axis=0), atol=1e-12)
    moving = render(make_scene(3, 8, H, W))
    assert np.abs(moving.geometry.world_from_cam[-1] - np.eye(4)).max() > 0.1  # the scene's own camera moves
    assert v.shots[0].dynamic_mask.any() and (v.frames[0] != v.frames[-1]).any()  # its objects still do


def test_bad_cut_arguments_are_one_line():
    with pytest.raises(InputError, match="2 entries for 3 seeds"):
        cut_video([0, 1, 2], [5, 5], H, W)
    with pytest.raises(InputError, match="does not fit"):
        cut_video([0, 1, 2], [6, 3, 6], H, W, fade_frames=5)
    with pytest.raises(InputError, match="fade_kind"):
        cut_video([0, 1], 5, H, W, fade_frames=2, fade_kind="wipe")


def test_written_archive_and_its_ground_truth_are_consistent(tmp_path):
    spec = ArchiveSpec(height=H, width=W, videos=[
        {"name": "cut", "kind": "cut", "seeds": [4, 5], "shot_frames": [7, 6], "fade_frames": 3},
        {"name": "static", "kind": "static", "seeds": [6], "shot_frames": [6]},
        {"name": "bad", "kind": "corrupted", "seeds": [7], "shot_frames": [6],
         "predictor_noise": {"corrupt_windows": 1, "ramp_corruption": True}},
    ])
    written = write_archive(tmp_path, spec)
    manifest = read_archive(tmp_path)
    assert [e["name"] for e in manifest["videos"]] == ["cut", "static", "bad"] and manifest["synthetic"]
    cut = manifest["videos"][0]
    assert cut["boundaries"] == [7] and cut["shots"] == [[0, 7], [7, 13]] and cut["n_frames"] == 13
    assert manifest["videos"][2]["predictor_noise"] == {"corrupt_windows": 1, "ramp_corruption": True}
    assert written["videos"][1]["kind"] == "static"
    gt = read_ground_truth(cut["ground_truth"])
    assert gt.n_frames == 13 and [s["start"] for s in gt.meta["shots"]] == [0, 7]
    np.testing.assert_array_equal(gt.world_from_cam[7], np.eye(4))  # each shot starts its own world frame
    want = cut_video([4, 5], [7, 6], H, W, fade_frames=3)
    np.testing.assert_array_equal(gt.depth, concatenated_geometry(want).depth)
    np.testing.assert_allclose(gt.world_from_cam[8:], want.shots[1].world_from_cam[1:])
    from geo4d.video import read_video

    frames = read_video(manifest["videos"][1]["video"])[0]
    assert frames.shape == (6, H, W, 3)


def test_archive_spec_refuses_bad_entries(tmp_path):
    with pytest.raises(InputError, match="one shot"):
        write_archive(tmp_path, {"videos": [{"name": "s", "kind": "static", "seeds": [1, 2], "shot_frames": [4, 4]}]})
    with pytest.raises(InputError, match="unique"):
        write_archive(tmp_path, {"videos": [{"name": "a", "kind": "clean", "seeds": [1], "shot_frames": [4]}] * 2})
    assert not (tmp_path / "archive.json").exists()
