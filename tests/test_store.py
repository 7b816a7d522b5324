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


# ---- format 2: checksums, every chunk written, compact windows; format 1 still read ------------------
def _synthetic_video(d, name="v", n_frames=40, height=160, width=256, seed=0):
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth

    r = render(make_scene(seed=seed, n_frames=n_frames, height=height, width=width))
    write_video(d / f"{name}.mp4", r.frames, fps=10)
    write_ground_truth(d / f"{name}.gt", r.geometry)
    return d / f"{name}.mp4", r


def test_every_array_is_checksummed_and_writes_its_empty_chunks(tmp_path):
    from zarr.codecs import Crc32cCodec

    from storage.store import STORE_VERSION, missing_chunks

    s = Store(tmp_path / "s.zarr")
    assert STORE_VERSION == 2 and s.root.attrs["geo4d_store"]["version"] == 2
    s.ensure_video(_info(T=3))
    s.prepare_windows("v1", [0], 16, 4, "p", "fp")
    s.write_window("v1", 0, _zero_pred())  # a window of zeros: every chunk equals the fill value
    conf = np.zeros((3, 4, 6))  # all-zero frames: chunks equal to the fill value
    s.write_fused("v1", Geometry(np.zeros((3, 4, 6)), conf > 0, np.tile(np.eye(3), (3, 1, 1)),
                                 np.tile(np.eye(4), (3, 1, 1)), points=np.zeros((3, 4, 6, 3)), confidence=conf))
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    paths = [f"videos/v1/windows/{n}" for n in ("pointmap", "pointmap_conf", "ray_dir", "ray_moment", "disparity", "done")]
    paths += [f"videos/v1/fused/{n}" for n in ("depth", "confidence", "intrinsics", "cam_to_world", "points")]
    for p in paths:
        arr = root[p]
        assert isinstance(arr.metadata.codecs[-1], Crc32cCodec), p
        assert missing_chunks(arr) == [], f"{p}: a fill-value chunk was not written"


def _zero_pred(V=16, H=4, W=6):
    z3, z = np.zeros((V, H, W, 3), np.float32), np.zeros((V, H, W), np.float32)
    return WindowPrediction(pointmap=z3, pointmap_conf=z, ray_dir=z3, ray_moment=z3, disparity=z)


def test_window_modalities_are_compact_and_clean_input_still_fuses_accurately(tmp_path):
    from zarr.codecs import BloscCodec

    from geo4d.synthetic_predictor import SyntheticPredictor
    from pipeline import stages
    from storage.ground_truth import read_ground_truth
    from storage.store import WINDOW_MANTISSA_BITS

    video, _ = _synthetic_video(tmp_path)
    s = Store(tmp_path / "s.zarr")
    vid = stages.decode_stage(s, str(video), video_id="v").video_id
    stages.windows_stage(s, vid, {"kind": "synthetic"})
    stages.fuse_stage(s, vid)
    m = stages.evaluate_stage(s, vid).details["metrics"]
    assert m["ate_rel"] < 1e-3 and m["abs_rel"] < 5e-3, m  # ATE < 0.1 % of the path
    arrays, starts, _ = s.windows(vid)
    # Stored: plain float32 with the low mantissa bits zero, at most a quarter of format 1's bytes.
    pred = SyntheticPredictor(read_ground_truth(video.with_suffix(".gt")), seed=0)
    frames = s.read_frames(vid)
    old = zarr.open_group(str(tmp_path / "format1.zarr"), mode="w", zarr_format=3)
    new_bytes = old_bytes = 0
    for name, arr in arrays.items():
        stored = np.asarray(arr[:])
        assert stored.dtype == np.float32
        assert not (stored.view(np.uint32) & np.uint32((1 << (23 - WINDOW_MANTISSA_BITS)) - 1)).any(), name
        exact = np.stack([getattr(pred.predict_window(frames[st:st + 16], st), name) for st in starts]).astype(np.float32)
        assert np.allclose(stored, exact, rtol=2.0 ** -(WINDOW_MANTISSA_BITS + 1), atol=0), name
        a1 = old.create_array(name, shape=exact.shape, chunks=(1,) + exact.shape[1:], dtype="float32",
                              compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), fill_value=0)
        a1[:] = exact
        new_bytes += arr.nbytes_stored()
        old_bytes += a1.nbytes_stored()
    assert new_bytes <= 0.25 * old_bytes, (new_bytes, old_bytes)


def _v1_store(path, video, r):
    """A store as format 1 wrote it: Blosc lz4, no checksums, fill-value chunks skipped, version 1."""
    from zarr.codecs import BloscCodec

    from geo4d.fusion import fuse
    from geo4d.synthetic_predictor import SyntheticPredictor
    from geo4d.windows import window_starts

    lz4 = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs["geo4d_store"] = {"format": "geo4d-store", "version": 1}
    v = root.create_group("videos/old")
    T, H, W = r.frames.shape[:3]

    def array(grp, name, data):
        grp.create_array(name, shape=data.shape, chunks=(1,) + data.shape[1:], dtype=data.dtype,
                         compressors=lz4, fill_value=0)[:] = data

    array(v, "frames", r.frames)
    starts = window_starts(T)
    pred = SyntheticPredictor(r.geometry, seed=0)
    preds = [pred.predict_window(r.frames[st:st + 16], st) for st in starts]
    w = v.create_group("windows")
    w.attrs.update({"starts": starts, "window_size": 16, "stride": 4, "predictor": "synthetic", "fingerprint": "f1"})
    windows = {n: np.stack([getattr(p, n) for p in preds]).astype(np.float32)
               for n in ("pointmap", "pointmap_conf", "ray_dir", "ray_moment", "disparity")}
    for n, data in windows.items():
        array(w, n, data)
    array(w, "done", np.ones(len(starts), np.uint8))
    g = fuse(windows, starts, T).geometry
    f = v.create_group("fused")
    for n, data in (("depth", g.depth), ("confidence", g.confidence), ("intrinsics", g.intrinsics),
                    ("cam_to_world", g.world_from_cam), ("points", g.points)):
        array(f, n, np.asarray(data, np.float32))
    rec = {"status": "complete", "finished_at": "2025-01-01T00:00:00+00:00", "run_id": None, "parameters": {},
           "fingerprint": "x"}
    v.attrs.update({"source": str(video), "n_frames": T, "height": H, "width": W, "fps": 10.0,
                    "stages": {"decode": rec, "windows": dict(rec, windows=len(starts)), "fuse": rec}})
    return g


def test_a_format_1_store_is_read_verified_fused_and_exported(tmp_path, capsys):
    import pyarrow.parquet as pq

    from geo4d_cli import main
    from pipeline import stages

    video, r = _synthetic_video(tmp_path, n_frames=24, height=48, width=64)
    path = tmp_path / "v1.zarr"
    g = _v1_store(path, video, r)
    s = Store(path)
    assert s.root.attrs["geo4d_store"]["version"] == 1  # opening never rewrites the marker
    assert np.array_equal(s.read_frames("old"), r.frames)
    assert np.array_equal(s.read_fused("old").depth, g.depth)
    assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "decode only" in out and "checked for presence and decodability only" in out
    assert main(["export", str(path), str(tmp_path / "ds")]) == 0
    row = pq.read_table(tmp_path / "ds/index.parquet").to_pylist()[0]
    assert row["skipped"] is None
    assert np.array_equal(zarr.open_group(str(tmp_path / "ds" / row["zarr_path"]), mode="r")["depth"][:], g.depth)
    # Fusing again writes format-2 arrays beside the format-1 windows: same result.
    stages.fuse_stage(s, "old", require_upstream=False, overwrite=True)
    from storage.store import round_mantissa

    # same result, stored at format 2's precision (fused maps: 10 mantissa bits)
    assert np.allclose(s.read_fused("old").depth, round_mantissa(g.depth, 10), rtol=2 ** -10, atol=1e-6)
    assert main(["verify", str(path)]) == 0
    # A lost format-1 chunk (it read back as zeros before) is damage too.
    frames = s.video_array("old", "frames")
    (path / "videos/old/frames" / frames.metadata.encode_chunk_key((7, 0, 0, 0))).unlink()
    capsys.readouterr()
    assert main(["verify", str(path)]) == 1
    assert "chunk 7: missing" in capsys.readouterr().out


def test_windows_say_whether_their_point_maps_carry_a_z_offset(tmp_path):
    """Recorded by the writer; for windows written before the attribute existed, by their predictor:
    the Geo4D network's maps carry one (and so do those of a store that names no predictor), others not."""
    s = Store(tmp_path / "s.zarr")
    for vid, name, flag in (("a", "geo4d", None), ("b", "synthetic (test instrument)", None),
                            ("c", "geo4d", False), ("d", "p", True)):
        s.ensure_video(_info(vid))
        s.prepare_windows(vid, [0], 16, 4, name, "fp", pointmap_z_offset=flag)
    assert [s.windows_pointmap_z_offset(v) for v in "abcd"] == [True, False, False, True]
    del s.root["videos/a/windows"].attrs["predictor"]
    assert s.windows_pointmap_z_offset("a") is True
