"""Great Expectations checks at stage boundaries: good data passes, bad data names the expectation."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.geometry import Geometry
from geo4d.validation import ValidationError, validate_fused, validate_metrics, validate_windows

T, H, W = 6, 8, 12


def _fused():
    K = np.tile(np.array([[10.0, 0, 6], [0, 10.0, 4], [0, 0, 1]]), (T, 1, 1))
    conf = np.ones((T, H, W))
    return Geometry(np.ones((T, H, W)), conf > 0, K, np.tile(np.eye(4), (T, 1, 1)), confidence=conf)


def _windows():
    return {"pointmap": np.ones((2, 4, H, W, 3)), "pointmap_conf": np.ones((2, 4, H, W)),
            "ray_dir": np.tile([0.0, 0.0, 1.0], (2, 4, H, W, 1)), "ray_moment": np.zeros((2, 4, H, W, 3)),
            "disparity": np.ones((2, 4, H, W))}


def test_fused_checks():
    validate_fused(_fused(), H, W)
    f = _fused()
    f.world_from_cam[3, :3, :3] *= 1.1
    with pytest.raises(ValidationError, match="fuse: expectation expect_column_values_to_be_between failed on orthonormality_error"):
        validate_fused(f, H, W)
    f = _fused()
    f.depth[2, 1, 1] = -1.0
    with pytest.raises(ValidationError, match="min_confident_depth"):
        validate_fused(f, H, W)
    f = _fused()
    f.intrinsics[:, 0, 2] = 50.0
    with pytest.raises(ValidationError, match="on cx"):
        validate_fused(f, H, W)


def test_window_and_metric_checks():
    validate_windows(_windows(), [0, 2])
    w = _windows()
    w["disparity"][1, 0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="windows: .* on finite_fraction"):
        validate_windows(w, [0, 2])
    w = _windows()
    w["pointmap_conf"][:] = 0.0
    with pytest.raises(ValidationError, match="expect_column_mean_to_be_between failed on valid_fraction"):
        validate_windows(w, [0, 2])
    validate_metrics({"abs_rel": 0.1, "delta_1_25": 0.9, "ate": 0.01})
    with pytest.raises(ValidationError, match="on delta_1_25"):
        validate_metrics({"abs_rel": 0.1, "delta_1_25": 1.2, "ate": 0.01})
    with pytest.raises(ValidationError, match="abs_rel"):
        validate_metrics({"abs_rel": float("nan"), "delta_1_25": 0.9, "ate": 0.01})


def test_a_failed_expectation_marks_the_stage_failed(tmp_path, monkeypatch):
    import geo4d.fusion
    from pipeline import stages
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth
    from storage.store import Store

    r = render(make_scene(seed=7, n_frames=20, height=48, width=64))
    write_video(tmp_path / "v.mp4", r.frames, fps=10)
    write_ground_truth(tmp_path / "v.gt", r.geometry)
    s = Store(tmp_path / "s.zarr")
    vid = stages.decode_stage(s, str(tmp_path / "v.mp4")).video_id
    stages.windows_stage(s, vid, {"kind": "synthetic"})
    real = geo4d.fusion.fuse

    def broken(*a, **k):
        res = real(*a, **k)
        res.geometry.world_from_cam[5, :3, :3] *= 2.0  # not a rotation
        return res

    monkeypatch.setattr(stages, "fuse", broken)
    with pytest.raises(ValidationError, match="orthonormality_error"):
        stages.fuse_stage(s, vid)
    rec = s.stage_record(vid, "fuse")
    assert rec["status"] == "failed" and "expect_column_values_to_be_between" in rec["error"]
    assert "fused" not in s.root[f"videos/{vid}"]  # nothing written for the failed stage


def test_out_of_memory_retries_with_fewer_windows_per_call(tmp_path):
    """CUDA OOM in the sampling stage: halve the windows per call and resume only the missing windows."""
    from pipeline import stages
    from geo4d.synthetic import make_scene, render, write_video
    from geo4d.synthetic_predictor import SyntheticPredictor
    from storage.ground_truth import read_ground_truth, write_ground_truth
    from storage.store import Store

    r = render(make_scene(seed=8, n_frames=28, height=48, width=64))
    write_video(tmp_path / "v.mp4", r.frames, fps=10)
    write_ground_truth(tmp_path / "v.gt", r.geometry)
    s = Store(tmp_path / "s.zarr")
    vid = stages.decode_stage(s, str(tmp_path / "v.mp4")).video_id

    class Batching(SyntheticPredictor):
        window_batch = 4
        calls: list[int] = []

        def predict_windows(self, video, starts, size):
            for i in range(0, len(starts), self.window_batch):
                chunk = starts[i : i + self.window_batch]
                if len(chunk) > 1:
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
                for j, st in enumerate(chunk):
                    self.calls.append(st)
                    yield i + j, self.predict_window(video[st : st + size], st)

    pred = Batching(read_ground_truth(tmp_path / "v.gt"))
    res = stages.windows_stage(s, vid, pred)
    assert pred.window_batch == 1 and res.details["predicted"] == 4
    assert sorted(pred.calls) == [0, 4, 8, 12]  # every window predicted exactly once
    assert s.is_complete(vid, "windows")
