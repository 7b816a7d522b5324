"""End-to-end reconstruction of synthetic scenes through the Prefect flow and the CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from geo4d_cli import main as cli
from storage.store import Store

T, H, W = 24, 48, 64


def _synth(dirpath: Path, name: str, frames: int = T, seed: int = 0) -> Path:
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth

    r = render(make_scene(seed=seed, n_frames=frames, height=H, width=W))
    write_video(dirpath / f"{name}.mp4", r.frames, fps=10)
    write_ground_truth(dirpath / f"{name}.gt", r.geometry)
    return dirpath / f"{name}.mp4"


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory.mktemp("scene"), "scene0")


def _tree_digest(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def test_clean_synthetic_video_is_recovered(scene, tmp_path, prefect_env):
    from flows.reconstruct import reconstruct_video

    store = tmp_path / "s.zarr"
    res = reconstruct_video(str(scene), str(store), predictor={"kind": "synthetic"})
    m = res["evaluate"]["details"]["metrics"]
    assert m["ate_rel"] < 0.01, m
    assert m["abs_rel"] < 0.01, m
    s = Store(store, mode="r")
    vid = res["video_id"]
    recs = s.stage_records(vid)
    assert [recs[k]["status"] for k in ("decode", "windows", "fuse", "evaluate")] == ["complete"] * 4
    fused = s.read_fused(vid)
    assert np.allclose(fused.world_from_cam[0], np.eye(4), atol=1e-5)
    assert fused.depth.shape == (T, H, W)
    # A second run finds everything complete and recomputes nothing.
    res2 = reconstruct_video(str(scene), str(store), predictor={"kind": "synthetic"})
    assert all(res2[k]["skipped"] for k in ("decode", "windows", "fuse", "evaluate"))
    assert s.stage_records(vid)["windows"]["finished_at"] == recs["windows"]["finished_at"]


def test_point_maps_with_a_z_offset_are_fused_with_it(scene, tmp_path, prefect_env):
    """Windows whose point maps carry the network's unknown z offset (the synthetic instrument told to
    add one, as the Geo4D network's de-normalised maps have) are fused estimating it, because the
    windows' store says so — without being told in the fusion settings."""
    from flows.reconstruct import reconstruct_video

    store = tmp_path / "s.zarr"
    predictor = {"kind": "synthetic", "noise": {"pointmap_z_offset": True}}
    res = reconstruct_video(str(scene), str(store), predictor=predictor)
    m = res["evaluate"]["details"]["metrics"]
    assert m["abs_rel"] < 0.01 and m["ate_rel"] < 0.01, m
    s = Store(store, mode="r")
    vid = res["video_id"]
    assert s.windows_pointmap_z_offset(vid) is True
    assert s.stage_records(vid)["fuse"]["parameters"]["fusion"]["pointmap_z_offset"] is True
    # An explicit setting wins (and, wrong here, shows the offset matters).
    with pytest.raises(Exception, match="pointmap_z_offset|pinhole"):
        reconstruct_video(str(scene), str(tmp_path / "t.zarr"), predictor=predictor,
                          fusion={"pointmap_z_offset": False})


def test_interrupted_after_windows_rerun_predicts_no_window(scene, tmp_path, prefect_env, monkeypatch):
    import pipeline.stages
    from flows.reconstruct import reconstruct_video
    from geo4d.synthetic_predictor import SyntheticPredictor

    calls = []
    original = SyntheticPredictor.predict_window

    def counting(self, frames, start):
        calls.append(start)
        return original(self, frames, start)

    monkeypatch.setattr(SyntheticPredictor, "predict_window", counting)

    def crash(*a, **k):
        raise RuntimeError("simulated crash in the fuse stage")

    store = tmp_path / "s.zarr"
    with monkeypatch.context() as m:
        m.setattr(pipeline.stages, "fuse", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            reconstruct_video(str(scene), str(store), predictor={"kind": "synthetic"})
    n_windows = len(calls)
    assert n_windows == 3  # 24 frames: starts 0, 4, 8
    s = Store(store, mode="r")
    vid = s.video_ids()[0]
    assert s.is_complete(vid, "windows") and not s.is_complete(vid, "fuse")
    res = reconstruct_video(str(scene), str(store), predictor={"kind": "synthetic"})
    assert len(calls) == n_windows, "the rerun predicted windows again"
    assert res["windows"]["skipped"] and not res["fuse"]["skipped"]
    assert s.is_complete(vid, "evaluate")


def _run_cli(args, capsys):
    rc = cli(args)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_inputs_give_one_line_errors_and_leave_the_store_intact(scene, tmp_path, capsys, prefect_env):
    store = tmp_path / "s.zarr"
    assert cli(["reconstruct", str(scene), "--store", str(store), "--predictor", "synthetic"]) == 0
    capsys.readouterr()
    before = _tree_digest(store)

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(scene.read_bytes()[: scene.stat().st_size // 2])
    short = _synth(tmp_path, "short", frames=10, seed=3)
    cases = {
        str(tmp_path / "missing.mp4"): "no such file",
        str(text): "not a readable video",
        str(truncated): "truncated or corrupt|not a readable video",
        str(short): "fewer than one window of 16",
    }
    for path, problem in cases.items():
        rc, err = _run_cli(["reconstruct", path, "--store", str(store), "--predictor", "synthetic",
                            "--ground-truth", str(scene.with_suffix(".gt"))], capsys)
        assert rc == 2, (path, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and Path(path).name in err, err
        assert any(p in err for p in problem.split("|")), err
        assert _tree_digest(store) == before, f"store changed after bad input {path}"


def test_store_of_another_layout_is_refused_untouched(scene, tmp_path, capsys):
    foreign = tmp_path / "other.zarr"
    foreign.mkdir()
    (foreign / "data.csv").write_text("a,b\n1,2\n")
    before = _tree_digest(foreign)
    rc, err = _run_cli(["reconstruct", str(scene), "--store", str(foreign), "--predictor", "synthetic"], capsys)
    assert rc == 2 and "other.zarr" in err and "not a Zarr store" in err and len(err.splitlines()) == 1
    assert _tree_digest(foreign) == before


def test_fuse_command_on_a_store_written_by_another_tool(scene, tmp_path, capsys):
    """`geo4d fuse` needs only the windows arrays, their attrs and the video attrs (docs/store.md)."""
    import zarr

    from geo4d.synthetic_predictor import SyntheticPredictor
    from geo4d.windows import window_starts
    from storage.ground_truth import read_ground_truth

    gt = read_ground_truth(scene.with_suffix(".gt"))
    pred = SyntheticPredictor(gt, seed=5)
    starts = window_starts(T)
    root = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w", zarr_format=3)
    v = root.create_group("videos/clip7")
    v.attrs.update({"source": "elsewhere", "n_frames": T, "height": H, "width": W, "fps": 10.0})
    w = v.create_group("windows")
    w.attrs.update({"starts": starts, "window_size": 16, "stride": 4})
    blank = np.zeros((16, H, W, 3), np.uint8)
    preds = [pred.predict_window(blank, s) for s in starts]
    for name in ("pointmap", "pointmap_conf", "ray_dir", "ray_moment", "disparity"):
        data = np.stack([getattr(p, name) for p in preds]).astype(np.float16 if name != "ray_moment" else np.float32)
        w.create_array(name, shape=data.shape, dtype=data.dtype, fill_value=0)[:] = data
    assert cli(["fuse", "--store", str(tmp_path / "foreign.zarr"), "--video", "clip7"]) == 0
    fused = Store(tmp_path / "foreign.zarr", mode="r").read_fused("clip7")
    from geo4d.metrics import pose_metrics

    pm = pose_metrics(fused.world_from_cam, gt.world_from_cam)
    assert pm["ate_rel"] < 0.01, pm


def test_streamed_decode_stores_exactly_the_in_memory_decode(scene, tmp_path):
    from pipeline.stages import decode_stage
    from test_video import _reference_decode

    store = Store(tmp_path / "s.zarr")
    for size, stride in (((32, 48), 1), (None, 2)):
        res = decode_stage(store, str(scene), size=size, resize="stretch", frame_stride=stride, min_frames=8,
                           overwrite=True)
        ref = _reference_decode(scene, size, stride)
        assert np.array_equal(store.read_frames(res.video_id), ref)
        info = store.video_info(res.video_id)
        assert (info.n_frames, info.height, info.width) == ref.shape[:3] and store.is_complete(res.video_id, "decode")
        assert sorted(k for k, _ in store.root[f"videos/{res.video_id}"].members()) == ["frames", "frames_pts"]
        assert np.allclose(np.diff(store.frame_times(res.video_id)), stride / 10)  # the clip is 10 fps


def test_video_truncated_partway_leaves_the_store_as_it_was(tmp_path):
    from geo4d.errors import InputError
    from pipeline.stages import decode_stage
    from test_video import write_faststart_video

    full = write_faststart_video(tmp_path / "full.mp4", 64)
    cut = write_faststart_video(tmp_path / "full.mp4", 64, truncate_to=0.6)
    path = tmp_path / "s.zarr"
    store = Store(path)
    before = _tree_digest(path)
    with pytest.raises(InputError, match=r"cut\.mp4: .*truncated or corrupt"):
        decode_stage(store, str(cut))  # a new video: frames were staged before the break
    assert _tree_digest(path) == before and store.video_ids() == []
    res = decode_stage(store, str(full), video_id="clip")
    done = _tree_digest(path)
    with pytest.raises(InputError, match="truncated or corrupt"):
        decode_stage(store, str(cut), video_id="clip", overwrite=True)  # replacing a complete decode
    assert _tree_digest(path) == done
    assert store.stage_record("clip", "decode")["fingerprint"] == res.fingerprint
    assert store.read_frames("clip").shape == (64, 48, 64, 3)


def _decode_peak_bytes(video: Path, store: Store) -> int:
    import tracemalloc

    from pipeline.stages import decode_stage

    tracemalloc.start()
    try:
        decode_stage(store, str(video))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decode_peak_memory_does_not_grow_with_the_video_length(tmp_path):
    from geo4d.synthetic import write_video

    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w]
    videos = {}
    for n in (40, 160):
        frames = np.stack([np.stack([(xx + 3 * t) % 256, (yy + t) % 256, (xx + yy) % 256], -1) for t in range(n)])
        videos[n] = write_video(tmp_path / f"v{n}.mp4", frames.astype(np.uint8), fps=10)
    _decode_peak_bytes(videos[40], Store(tmp_path / "warm.zarr"))  # imports and caches, not counted
    # Zarr encodes a block's chunks on threads, so a peak varies from run to run: the least of two.
    peak = {n: min(_decode_peak_bytes(v, Store(tmp_path / f"s{n}-{k}.zarr")) for k in range(2))
            for n, v in videos.items()}
    frame_bytes = h * w * 3
    # The in-memory decode held every frame, twice while stacking: > 320 frames for 160 here.
    assert peak[160] < 100 * frame_bytes, {n: p / frame_bytes for n, p in peak.items()}
    assert peak[160] / peak[40] < 2, {n: p / frame_bytes for n, p in peak.items()}  # length ratio 4
