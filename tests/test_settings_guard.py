"""Honest fingerprints: every setting that changes predictions enters the windows fingerprint, and a
rerun with other settings than a finished stage stops, naming the setting, unless ``overwrite``."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.errors import SettingsChangedError
from pipeline import stages
from pipeline.predictors import frame_rate_condition, parse_predictor_spec, prediction_parameters
from storage.store import Store


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth

    d = tmp_path_factory.mktemp("guard")
    r = render(make_scene(seed=5, n_frames=24, height=48, width=64))
    write_video(d / "v.mp4", r.frames, fps=12)
    write_ground_truth(d / "v.gt", r.geometry)
    return d / "v.mp4"


def _synthetic(seed=0, depth_noise=0.0):
    return parse_predictor_spec({"kind": "synthetic", "seed": seed, "noise": {"depth_noise": depth_noise}})


def _finished(store, video):
    vid = stages.decode_stage(store, str(video)).video_id
    stages.windows_stage(store, vid, _synthetic())
    stages.fuse_stage(store, vid)
    return vid


def test_changed_predictor_settings_stop_and_keep_the_finished_windows(video, tmp_path):
    store = Store(tmp_path / "s.zarr")
    vid = _finished(store, video)
    rec = store.stage_record(vid, "windows")
    depth = store.read_fused(vid).depth
    with pytest.raises(SettingsChangedError, match=r"stage 'windows' was finished with predictor\.seed=0; "
                                                   r"this run asks 1 .*--overwrite"):
        stages.windows_stage(store, vid, _synthetic(seed=1))
    assert store.stage_record(vid, "windows") == rec  # nothing changed
    assert store.is_complete(vid, "fuse") and np.array_equal(store.read_fused(vid).depth, depth)
    # the same settings still skip; overwrite recomputes (and forgets the stages after it)
    assert stages.windows_stage(store, vid, _synthetic()).skipped
    res = stages.windows_stage(store, vid, _synthetic(seed=1), overwrite=True)
    assert not res.skipped and res.details["predicted"] == 3  # 24 frames: 3 windows
    assert store.stage_record(vid, "windows")["parameters"]["predictor"]["seed"] == 1
    assert not store.is_complete(vid, "fuse")


def test_another_decode_size_does_not_delete_the_reconstruction(video, tmp_path):
    store = Store(tmp_path / "s.zarr")
    vid = _finished(store, video)
    frames = store.read_frames(vid)
    with pytest.raises(SettingsChangedError, match=r"stage 'decode' was finished with size=None; this run asks \[32, 48\]"):
        stages.decode_stage(store, str(video), size=(32, 48))
    assert np.array_equal(store.read_frames(vid), frames) and store.is_complete(vid, "fuse")
    stages.decode_stage(store, str(video), size=(32, 48), overwrite=True)
    assert store.video_info(vid).height == 32 and not store.is_complete(vid, "windows")


def test_changed_fusion_settings_stop_unless_overwrite(video, tmp_path):
    store = Store(tmp_path / "s.zarr")
    vid = _finished(store, video)
    with pytest.raises(SettingsChangedError, match=r"stage 'fuse' was finished with fusion\.alpha_rays=1\.0; this run asks 0\.0"):
        stages.fuse_stage(store, vid, fusion={"alpha_rays": 0})
    assert not stages.fuse_stage(store, vid, fusion={"alpha_rays": 0}, overwrite=True).skipped


class _Interrupted(Exception):
    pass


def test_windows_of_an_interrupted_run_are_kept_for_other_settings(video, tmp_path, monkeypatch):
    from geo4d.synthetic_predictor import SyntheticPredictor

    store = Store(tmp_path / "s.zarr")
    vid = stages.decode_stage(store, str(video)).video_id
    original = SyntheticPredictor.predict_windows

    def two_then_stop(self, frames, starts, size):
        for n, item in enumerate(original(self, frames, starts, size)):
            if n == 2:
                raise _Interrupted
            yield item

    monkeypatch.setattr(SyntheticPredictor, "predict_windows", two_then_stop)
    with pytest.raises(_Interrupted):
        stages.windows_stage(store, vid, _synthetic())
    monkeypatch.setattr(SyntheticPredictor, "predict_windows", original)
    assert store.windows_progress(vid)["done"] == 2
    with pytest.raises(SettingsChangedError, match=r"2 window\(s\) were sampled with predictor\.noise\.depth_noise=0\.0; "
                                                   r"this run asks 0\.1"):
        stages.windows_stage(store, vid, _synthetic(depth_noise=0.1))
    res = stages.windows_stage(store, vid, _synthetic())  # same settings: resumes the missing windows
    assert res.details["predicted"] == 1 and store.is_complete(vid, "windows")


def test_prediction_parameters_hold_everything_that_changes_predictions(tmp_path):
    for name in ("c.yaml", "m.ckpt", "v.ckpt", "ctx.safetensors"):
        (tmp_path / name).write_bytes(name.encode() * 10)
    base_spec = {"kind": "geo4d", "config": str(tmp_path / "c.yaml"), "checkpoint": str(tmp_path / "m.ckpt"),
                 "pointmap_vae": str(tmp_path / "v.ckpt")}

    def params(device="cpu", fps=30.0, **change):
        return prediction_parameters(parse_predictor_spec(base_spec | change), fps=fps, device=device)

    base = params()
    assert base["fs"] == 30 and base["autocast"] == "off" and base["image_size"] == [320, 512]
    assert params(device="cuda:0")["autocast"] == "bfloat16"  # "auto" is bf16 on CUDA
    for change in ({"dtype": "bfloat16"}, {"autocast": "float16"}, {"compile": True}, {"seed": 7},
                   {"sampler": {"steps": 10}}, {"image_size": [384, 512]}, {"fs": 8}, {"sky_eps": 0.1},
                   {"context": str(tmp_path / "ctx.safetensors")}):
        assert params(**change) != base, change
    assert params(fps=25.0) != base  # fs follows the video
    for same in ({"window_batch": 1}, {"vae_batch": 2}, {"device": "cpu"}):
        assert params(**same) == base, same
    (tmp_path / "m.ckpt").write_bytes(b"retrained" * 10)  # same path, other weights
    assert params() != base


def test_fs_follows_the_official_demo_rule():
    spec = parse_predictor_spec({"kind": "geo4d", "config": "c", "checkpoint": "m", "pointmap_vae": "v"})
    assert [frame_rate_condition(spec, f) for f in (30.0, 29.97, 12.5, 0.0)] == [30, 29, 12, 24]
    assert frame_rate_condition(spec.model_copy(update={"fs": 24}), 30.0) == 24


def test_cli_names_the_differing_setting_and_overwrite_recomputes(video, tmp_path, capsys, prefect_env):
    from geo4d_cli import main

    store = str(tmp_path / "cli.zarr")
    args = ["reconstruct", str(video), "--store", store, "--predictor", "synthetic", "--no-evaluate"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--seed", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "predictor.seed=0; this run asks 3" in err and "--overwrite" in err
    assert main(args + ["--seed", "3", "--overwrite"]) == 0
    s = Store(store, mode="r")
    assert s.stage_record(s.video_ids()[0], "windows")["parameters"]["predictor"]["seed"] == 3


def test_a_fusion_recorded_with_the_previous_defaults_stops_and_overwrite_keeps_the_windows(video, tmp_path):
    """A store fused before smooth_auto/consensus_init (smooth_trans 0.001): the rerun names the
    setting; --overwrite re-fuses without sampling again (docs/fusion.md, "Stores fused before …")."""
    from storage.store import stage_fingerprint

    store = Store(tmp_path / "s.zarr")
    vid = _finished(store, video)
    rec = store.stage_record(vid, "fuse")
    old = {k: v for k, v in rec["parameters"]["fusion"].items() if k not in ("smooth_auto", "consensus_init")}
    params = {**rec["parameters"], "fusion": {**old, "smooth_trans": 0.001}}
    store.record_stage(vid, "fuse", "complete", parameters=params, run_id="before")
    assert store.stage_record(vid, "fuse")["fingerprint"] == stage_fingerprint(params)
    windows = store.stage_record(vid, "windows")
    with pytest.raises(SettingsChangedError, match=r"stage 'fuse' was finished with no fusion\.consensus_init "
                                                   r"setting \(from before it existed\); this run asks True"):
        stages.fuse_stage(store, vid)
    assert not stages.fuse_stage(store, vid, overwrite=True).skipped
    assert store.stage_record(vid, "windows") == windows and stages.fuse_stage(store, vid).skipped
