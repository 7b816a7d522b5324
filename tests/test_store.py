"""The store contract (docs/store.md): layout checks, stage records, per-window markers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from geo4d.errors import StoreError
from geo4d.geometry import Geometry
from geo4d.predictor import WindowPrediction
from storage.store import Store, VideoInfo, stage_fingerprint, video_id_for


def _info(vid="v1", T=20, H=4, W=6):
    return VideoInfo(vid, "/src/v1.mp4", T, H, W, 25.0)


def _pred(V=16, H=4, W=6, value=1.0):
    return WindowPrediction(
        pointmap=np.full((V, H, W, 3), value, np.float32),
        pointmap_conf=np.ones((V, H, W), np.float32),
        ray_dir=np.zeros((V, H, W, 3), np.float32),
        ray_moment=np.zeros((V, H, W, 3), np.float32),
        disparity=np.ones((V, H, W), np.float32),
    )


def test_new_store_has_marker_and_video_attrs(tmp_path):
    s = Store(tmp_path / "s.zarr")
    s.ensure_video(_info())
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert root.attrs["geo4d_store"]["format"] == "geo4d-store"
    attrs = root["videos/v1"].attrs.asdict()
    assert {k: attrs[k] for k in ("source", "n_frames", "height", "width", "fps")} == {
        "source": "/src/v1.mp4", "n_frames": 20, "height": 4, "width": 6, "fps": 25.0}
    assert s.video_ids() == ["v1"]


def test_windows_resume_markers_and_records(tmp_path):
    s = Store(tmp_path / "s.zarr")
    s.ensure_video(_info())
    done = s.prepare_windows("v1", [0, 4], 16, 4, "p", "fp1")
    assert done.tolist() == [False, False]
    s.write_window("v1", 0, _pred(value=2.0))
    # Same layout and fingerprint: the stored window is kept and reported done.
    assert s.prepare_windows("v1", [0, 4], 16, 4, "p", "fp1").tolist() == [True, False]
    assert float(s.root["videos/v1/windows/pointmap"][0, 0, 0, 0, 0]) == 2.0
    # An incomplete windows group is refused for fusion, naming the missing windows.
    with pytest.raises(StoreError, match=r"windows \[1\] are incomplete"):
        s.windows("v1")
    s.write_window("v1", 1, _pred())
    arrays, starts, V = s.windows("v1")
    assert starts == [0, 4] and V == 16 and arrays["disparity"].shape == (2, 16, 4, 6)
    # Other parameters: everything is recreated.
    assert s.prepare_windows("v1", [0, 4], 16, 4, "p", "fp2").tolist() == [False, False]
    rec = s.record_stage("v1", "windows", "complete", parameters={"a": 1}, run_id="r")
    assert rec["fingerprint"] == stage_fingerprint({"a": 1})
    assert s.is_complete("v1", "windows", stage_fingerprint({"a": 1}))
    assert not s.is_complete("v1", "windows", stage_fingerprint({"a": 2}))
    s.clear_stages("v1", ["windows", "fuse"])
    assert not s.is_complete("v1", "windows")


def test_foreign_store_following_the_contract_is_readable(tmp_path):
    """A store written with plain zarr (no marker, no done array, no records) serves `windows()`."""
    root = zarr.open_group(str(tmp_path / "f.zarr"), mode="w", zarr_format=3)
    v = root.create_group("videos/abc")
    v.attrs.update({"source": "x", "n_frames": 16, "height": 2, "width": 3, "fps": 10})
    w = v.create_group("windows")
    w.attrs.update({"starts": [0], "window_size": 16, "stride": 4})
    for name, tail in (("pointmap", (3,)), ("pointmap_conf", ()), ("ray_dir", (3,)), ("ray_moment", (3,)), ("disparity", ())):
        w.create_array(name, shape=(1, 16, 2, 3) + tail, dtype="float16", fill_value=0)
    s = Store(tmp_path / "f.zarr")
    arrays, starts, V = s.windows("abc")
    assert starts == [0] and V == 16 and arrays["pointmap"].dtype == np.float16
    assert s.video_info("abc").n_frames == 16


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("not a store"), "is a file"),
        (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "not a Zarr store"),
        (lambda p: (p.mkdir(), (p / ".zgroup").write_text(json.dumps({"zarr_format": 2}))), "Zarr v2"),
        (lambda p: zarr.open_group(str(p), mode="w", zarr_format=3).create_array("images", shape=(2,), dtype="f4"),
         "another layout"),
    ],
)
def test_other_layouts_are_refused_untouched(tmp_path, make, message):
    p = tmp_path / "x.zarr"
    make(p)
    before = sorted(str(q.relative_to(tmp_path)) for q in tmp_path.rglob("*"))
    with pytest.raises(StoreError, match=message):
        Store(p)
    assert sorted(str(q.relative_to(tmp_path)) for q in tmp_path.rglob("*")) == before


def test_video_id_is_stable_and_content_based(tmp_path):
    a = tmp_path / "clip one.mp4"
    a.write_bytes(b"abc" * 1000)
    b = tmp_path / "sub"
    b.mkdir()
    (b / "clip one.mp4").write_bytes(b"abc" * 1000)
    assert video_id_for(a) == video_id_for(b / "clip one.mp4")
    assert video_id_for(a).startswith("clip_one-")
    (b / "clip one.mp4").write_bytes(b"abd" * 1000)
    assert video_id_for(a) != video_id_for(b / "clip one.mp4")


def test_fused_roundtrip_and_shape_check(tmp_path):
    s = Store(tmp_path / "s.zarr")
    s.ensure_video(_info(T=3))
    conf = np.ones((3, 4, 6))
    fused = Geometry(np.ones((3, 4, 6)), conf > 0, np.tile(np.eye(3), (3, 1, 1)), np.tile(np.eye(4), (3, 1, 1)),
                     points=np.zeros((3, 4, 6, 3)), confidence=conf)
    s.write_fused("v1", fused, diagnostics={"x": 1})
    out = s.read_fused("v1")
    assert out.world_from_cam.shape == (3, 4, 4) and out.depth.dtype == np.float32 and out.valid.all()
    assert out.meta["diagnostics"] == {"x": 1}
    # The on-disk name of the poses is the store's (docs/store.md), not the record's.
    assert "cam_to_world" in zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["videos/v1/fused"]
    short = Geometry(np.ones((2, 4, 6)), conf[:2] > 0, fused.intrinsics[:2], fused.world_from_cam[:2],
                     points=fused.points[:2], confidence=conf[:2])
    with pytest.raises(ValueError, match="expected 3 frames"):
        s.write_fused("v1", short)
