"""The synthetic predictor in videos with cuts (issue 15): its corrupted windows are drawn among the
windows actually predicted (laid per shot), not from a whole-video layout whose starts a shot's
windows may not contain."""

from __future__ import annotations

import numpy as np
import pytest

from test_shots import write_cut_video

from geo4d.errors import InputError
from geo4d.shots import shot_window_starts, split_shots
from geo4d.synthetic_predictor import SyntheticPredictor
from geo4d.windows import window_starts


def _truth(T=48, H=16, W=24):
    from geo4d.synthetic import make_scene, render

    return render(make_scene(seed=5, n_frames=T, height=H, width=W)).geometry


def test_corrupted_windows_are_among_the_given_starts():
    g = _truth()
    layout = shot_window_starts(split_shots([22], 48), 16, 4)  # [0, 4, 6, 22, 26, 30, 32]
    whole = window_starts(48, 16, 4)
    noise = {"corrupt_windows": 2, "corrupt_deg": 20.0}
    for seed in range(6):
        p = SyntheticPredictor(g, noise, seed=seed, starts=layout)
        assert len(p.corrupted_starts) == 2 and set(p.corrupted_starts) <= set(layout)
    # Seed 0 draws [20, 24] from the whole-video layout: neither is a window of these shots.
    assert not set(SyntheticPredictor(g, noise, seed=0).corrupted_starts) & set(layout)
    assert SyntheticPredictor(g, noise, seed=0, starts=whole).corrupted_starts == \
        SyntheticPredictor(g, noise, seed=0).corrupted_starts  # the default layout: the same draw as before
    p = SyntheticPredictor(g, noise, seed=0, starts=layout)
    frames = np.zeros((16, 16, 24, 3), np.uint8)
    for s in layout:
        p.predict_window(frames, s)
    assert sorted(s for s in layout if p.gauges[s]["corrupted"]) == p.corrupted_starts
    with pytest.raises(InputError, match="outside"):
        SyntheticPredictor(g, noise, starts=[40])
    with pytest.raises(InputError, match="only 7 windows"):
        SyntheticPredictor(g, {"corrupt_windows": 8}, starts=layout)


def test_windows_stage_corrupts_windows_of_the_shots(tmp_path):
    """Through the pipeline: a two-shot video (22 + 26 frames) whose windows are to be corrupted
    gets corrupted windows (seed 0 would draw none of its windows from the whole-video layout), and
    the shot holding them fails the default filter while a clean shot passes it."""
    from geo4d.curation import load_where
    from geo4d.shots import windows_of_shot
    from pipeline import stages
    from storage.store import Store

    s = Store(tmp_path / "s.zarr")
    path = write_cut_video(tmp_path, [3, 4], [22, 26])
    vid = stages.decode_stage(s, str(path), video_id="cut").video_id
    stages.shots_stage(s, vid)
    spec = {"kind": "synthetic", "noise": {"corrupt_windows": 2, "corrupt_deg": 20.0, "ramp_corruption": True}}
    stages.windows_stage(s, vid, spec)
    _, starts, V = s.windows(vid)
    from pipeline.predictors import predictor_from_spec

    corrupted = predictor_from_spec(spec, video_path=str(path), starts=starts).corrupted_starts
    assert len(corrupted) == 2 and set(corrupted) <= set(starts)
    stages.fuse_stage(s, vid)
    keep = load_where(None)[0]
    shots = s.read_shots(vid)
    for shot, sc in zip(shots, s.read_shot_scores(vid)):
        bad = any(starts[g] in corrupted for g in windows_of_shot(starts, shot, V))
        assert keep.passes(sc) is not bad, (shot, sc["worst_window_agreement"])
