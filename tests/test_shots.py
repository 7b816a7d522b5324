"""Shots before windows (issue 15): the pure shot spans, detection on frames, and per-shot reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geo4d.errors import InputError
from geo4d.shots import (frame_shot_index, is_single_shot, join_shot_geometry, shot_window_starts, shots_from_records,
                         single_shot, split_shots, windows_of_shot)

H, W = 48, 64


# ---- pure ------------------------------------------------------------------------------------------
def test_split_shots_covers_every_frame_once_and_skips_short_shots():
    shots = split_shots([(30, "cut"), (40, "fade"), 0, 90, 30], 70, min_frames=16)
    assert [(s.start, s.end) for s in shots] == [(0, 30), (30, 40), (40, 70)]
    assert [s.kind for s in shots] == ["start", "cut", "fade"]
    assert shots[1].skipped == "shorter than one window (10 frames < 16)"
    assert shots[0].skipped is None and shots[2].skipped is None
    assert np.array_equal(frame_shot_index(shots, 70), np.r_[np.zeros(30), -np.ones(10), 2 * np.ones(30)])
    assert shots_from_records([s.to_dict() for s in shots], 70) == shots


def test_split_shots_refuses_unknown_kinds_and_bad_records():
    with pytest.raises(InputError, match="kind 'wipe'"):
        split_shots([(5, "wipe")], 20)
    with pytest.raises(InputError, match="do not cover"):
        shots_from_records([{"index": 0, "start": 0, "end": 10}], 20)


def test_windows_lie_inside_shots():
    shots = split_shots([24, 30], 62, 16)  # shot 1 (6 frames) skipped
    starts = shot_window_starts(shots, 16, 4)
    for g, s in enumerate(starts):
        inside = [sh for sh in shots if sh.start <= s and s + 16 <= sh.end]
        assert len(inside) == 1 and inside[0].skipped is None
    assert windows_of_shot(starts, shots[2], 16) == [g for g, s in enumerate(starts) if s >= 30]
    covered = np.zeros(62, bool)
    for s in starts:
        covered[s:s + 16] = True
    assert covered[:24].all() and not covered[24:30].any() and covered[30:].all()
    assert is_single_shot(single_shot(62), 62) and not is_single_shot(shots, 62)


def test_join_shot_geometry_blanks_skipped_frames():
    from geo4d.geometry import Geometry

    shots = split_shots([20], 25, 16)  # frames 20–24 skipped

    def geo(n, f):
        d = np.full((n, 4, 5), 2.0, np.float32)
        K = np.tile(np.array([[f, 0, 2], [0, f, 1.5], [0, 0, 1]]), (n, 1, 1))
        P = np.tile(np.eye(4), (n, 1, 1))
        P[:, 0, 3] = np.arange(n)
        return Geometry(d, d > 0, K, P, points=np.ones((n, 4, 5, 3), np.float32), confidence=d / 2)

    g, src = join_shot_geometry([(shots[0], geo(20, 7.0), None)], 25, 4, 5)
    assert (g.depth[20:] == 0).all() and (g.confidence[20:] == 0).all() and (src[20:] == 0).all()
    assert np.allclose(g.world_from_cam[20:], np.eye(4)) and np.allclose(g.intrinsics[20:, 0, 0], 7.0)
    assert np.allclose(g.world_from_cam[:20, 0, 3], np.arange(20)) and (src[:20] == 1).all()


# ---- detection ------------------------------------------------------------------------------------
def _scenes(seeds, n):
    from geo4d.synthetic import make_scene, render

    return [render(make_scene(seed=s, n_frames=n, height=H, width=W)) for s in seeds]


def test_detects_hard_cuts_and_fades_within_one_frame():
    from pipeline.shots import ShotSettings, detect_boundaries

    a, b, c = (r.frames for r in _scenes([1, 2, 7], 24))
    dark = np.linspace(1, 0, 6)[:, None, None, None]
    fade = np.concatenate([a[:18], (a[18:] * dark).astype(np.uint8), (b[:6] * dark[::-1]).astype(np.uint8), b[6:]])
    cuts = detect_boundaries([np.concatenate([a, b]), c], 10.0, ShotSettings())
    assert [k for _, k in cuts] == ["cut", "cut"] and np.allclose([f for f, _ in cuts], [24, 48], atol=1)
    fades = detect_boundaries([fade], 10.0, ShotSettings())
    assert len(fades) == 1 and fades[0][1] == "fade" and abs(fades[0][0] - 24) <= 1
    assert detect_boundaries([a], 10.0, ShotSettings()) == []  # one continuous take
    assert detect_boundaries([np.concatenate([a, b])], 10.0, ShotSettings(detector="off")) == []


# ---- per-shot reconstruction ----------------------------------------------------------------------
def write_cut_video(directory: Path, seeds, n_frames, name: str = "cut") -> Path:
    """SYNTHETIC scenes joined by hard cuts (``n_frames`` per scene): ``<name>.mp4`` and its ``.gt``
    (each scene's ground truth in its own world frame)."""
    from geo4d.geometry import Geometry
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth

    lengths = [n_frames] * len(seeds) if np.isscalar(n_frames) else list(n_frames)
    rs = [render(make_scene(seed=s, n_frames=n, height=H, width=W)) for s, n in zip(seeds, lengths)]
    g = [r.geometry for r in rs]

    def cat(name):
        return None if getattr(g[0], name) is None else np.concatenate([getattr(x, name) for x in g])

    truth = Geometry(cat("depth"), cat("valid"), cat("intrinsics"), cat("world_from_cam"),
                     dynamic_mask=cat("dynamic_mask"))
    path = Path(directory) / f"{name}.mp4"
    write_video(path, np.concatenate([r.frames for r in rs]), fps=10)
    write_ground_truth(path.with_suffix(".gt"), truth)
    return path


def _reconstruct(store, path, shots=None):
    from pipeline import stages

    vid = stages.decode_stage(store, str(path)).video_id
    if shots is not False:
        stages.shots_stage(store, vid, shots=shots)
    stages.windows_stage(store, vid, {"kind": "synthetic"})
    stages.fuse_stage(store, vid)
    return vid, stages.evaluate_stage(store, vid).details["metrics"]


def test_each_shot_is_fused_on_its_own(tmp_path):
    from storage.store import Store

    path = write_cut_video(tmp_path, [1, 2], 24)
    cut, off = Store(tmp_path / "cut.zarr"), Store(tmp_path / "off.zarr")
    vid, m = _reconstruct(cut, path)
    _, m_off = _reconstruct(off, path, shots={"detector": "off"})
    shots = cut.read_shots(vid)
    assert [(s.start, s.end, s.kind) for s in shots] == [(0, 24, "start"), (24, 48, "cut")]
    _, starts, V = cut.windows(vid)
    assert all(s + V <= 24 or s >= 24 for s in starts)  # no window straddles the cut
    fused = cut.read_fused(vid)
    assert np.allclose(fused.world_from_cam[0], np.eye(4)) and np.allclose(fused.world_from_cam[24], np.eye(4))
    assert np.array_equal(cut.read_frame_shots(vid), np.r_[np.zeros(24), np.ones(24)].astype(np.int16))
    assert m["abs_rel"] < 0.01 and m["abs_rel"] < m_off["abs_rel"] / 3
    rec = cut.stage_record(vid, "evaluate")
    assert [r["start"] for r in rec["shot_metrics"]] == [0, 24]
    assert [r["shot"] for r in cut.read_shot_scores(vid)] == [0, 1]


def test_a_video_without_cuts_fuses_exactly_as_without_shots(tmp_path):
    from storage.store import Store
    from tests.conftest import write_synthetic_videos

    (path,) = write_synthetic_videos(tmp_path, [3], n_frames=24, height=H, width=W)
    a, b = Store(tmp_path / "a.zarr"), Store(tmp_path / "b.zarr")
    vid, ma = _reconstruct(a, path)
    _, mb = _reconstruct(b, path, shots=False)  # no shots stage at all: as before shots existed
    assert len(a.read_shots(vid)) == 1 and a.stage_record(vid, "shots")["shots"] == 1
    fa, fb = a.read_fused(vid), b.read_fused(vid)
    assert np.array_equal(fa.depth, fb.depth) and np.array_equal(fa.world_from_cam, fb.world_from_cam)
    assert ma == mb
    assert a.stage_record(vid, "windows")["fingerprint"] == b.stage_record(vid, "windows")["fingerprint"]


def test_short_shots_are_skipped_with_their_reason(tmp_path, capsys):
    from pipeline import stages
    from storage.store import Store

    path = write_cut_video(tmp_path, [1, 2], [24, 10])
    store = Store(tmp_path / "s.zarr")
    vid, m = _reconstruct(store, path)
    rec = store.stage_record(vid, "shots")
    assert rec["skipped"] == 1 and "shorter than one window (10 frames < 16)" in rec["skipped_shots"][0]["reason"]
    fused = store.read_fused(vid)
    assert (fused.depth[24:] == 0).all() and np.allclose(fused.world_from_cam[24:], np.eye(4))
    assert (store.read_frame_shots(vid)[24:] == -1).all() and m["abs_rel"] < 0.01
    scores = store.read_shot_scores(vid)
    assert scores[1]["skipped"] and scores[1]["window_agreement"] is None
    from geo4d_cli import main
    from storage.manifest import manifest_table

    row = manifest_table(store).to_pylist()[0]
    assert row["shots"] == 2 and row["shots_skipped"] == 1 and row["shot_start"] == [0, 24]
    assert row["window_agreement"][1] is None and row["window_agreement"][0] < 0.01
    assert main(["status", store.location]) == 0
    printed = capsys.readouterr().out
    assert "2 (1 skipped)" in printed and "skipped shot: " + vid + ": frames 24–33: shorter than one window" in printed
    short = write_cut_video(tmp_path, [4, 5], [10, 12], name="short")
    vid2 = stages.decode_stage(store, str(short), min_frames=1).video_id
    with pytest.raises(InputError, match="no shot is at least one window"):
        stages.shots_stage(store, vid2)
