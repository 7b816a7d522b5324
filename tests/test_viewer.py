"""`geo4d view`: the Rerun recording is read back and checked against the fused geometry."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d_cli import main

T, H, W, FPS = 20, 48, 64, 10


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """v0 fused (synthetic predictor), v1 only decoded."""
    from geo4d.synthetic import make_scene, render, write_video
    from pipeline import stages
    from storage.ground_truth import write_ground_truth
    from storage.store import Store

    d = tmp_path_factory.mktemp("view")
    s = Store(d / "s.zarr")
    for i in range(2):
        r = render(make_scene(seed=70 + i, n_frames=T, height=H, width=W))
        write_video(d / f"v{i}.mp4", r.frames, fps=FPS)
        write_ground_truth(d / f"v{i}.gt", r.geometry)
        stages.decode_stage(s, str(d / f"v{i}.mp4"), video_id=f"v{i}")
    stages.windows_stage(s, "v0", {"kind": "synthetic"})
    stages.fuse_stage(s, "v0")
    return Store(s.location, mode="r")


def _chunks(path, entity: str, column: str):
    """(frame, timeline values, value) of every row of ``entity`` that has ``column``, by frame."""
    from rerun.chunk import RrdReader

    rows = {}
    for chunk in RrdReader(path).stream().to_chunks():
        batch = chunk.to_record_batch()
        if chunk.entity_path != entity or column not in batch.schema.names:
            continue
        for i in range(batch.num_rows):
            frame = None if chunk.is_static else batch.column("frame")[i].as_py()
            time = batch.column("time")[i].value if "time" in batch.schema.names else None
            rows[frame] = (time, batch.column(column)[i].values)
    return rows


def _floats(values, n: int) -> np.ndarray:
    return np.asarray(values.flatten().to_numpy(zero_copy_only=False), np.float64).reshape(-1, n)


def _rgb(values) -> np.ndarray:
    """Rerun's packed 0xRRGGBBAA colours → (N, 3) uint8."""
    c = np.asarray(values.to_numpy(zero_copy_only=False), np.uint32)
    return np.stack([(c >> 24) & 255, (c >> 16) & 255, (c >> 8) & 255], axis=1).astype(np.uint8)


def _record(store, tmp_path, monkeypatch, *extra: str):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.rrd"
    assert main(["view", store.location, "--video", "v0", "--save", str(out), *extra]) == 0
    return str(out)


def _expected(store, k: int, drop: float = 0.1):
    fused, frames = store.read_fused("v0"), store.read_frames("v0")
    threshold = np.quantile(fused.confidence[fused.valid], drop)
    mask = fused.valid[k] & (fused.confidence[k] >= threshold)
    return fused, fused.points[k][mask], frames[k][mask]


def test_recording_holds_the_fused_points_cameras_and_timelines(store, tmp_path, monkeypatch, capsys):
    rrd = _record(store, tmp_path, monkeypatch)
    assert "SYNTHETIC" in capsys.readouterr().out
    points = _chunks(rrd, "/world/points", "Points3D:positions")
    assert sorted(points) == list(range(T))
    assert [points[k][0] for k in range(T)] == [round(k / FPS * 1e9) for k in range(T)]  # `time` in ns
    colors = _chunks(rrd, "/world/points", "Points3D:colors")
    for k in (0, 7, T - 1):
        fused, want, rgb = _expected(store, k)
        got = _floats(points[k][1], 3)
        assert 0 < len(want) < H * W and got.shape == want.shape  # filtered, none subsampled (3072 < 20000)
        assert np.array_equal(got, want.astype(np.float64))
        assert np.array_equal(_rgb(colors[k][1]), rgb)
    fused = store.read_fused("v0")
    rot = _chunks(rrd, "/world/camera", "Transform3D:mat3x3")
    trans = _chunks(rrd, "/world/camera", "Transform3D:translation")
    K = _chunks(rrd, "/world/camera", "Pinhole:image_from_camera")
    res = _chunks(rrd, "/world/camera", "Pinhole:resolution")
    assert sorted(rot) == sorted(K) == list(range(T))
    for k in range(T):
        pose = np.eye(4)
        pose[:3, :3] = _floats(rot[k][1], 9).reshape(3, 3).T  # Rerun stores matrices column-major
        pose[:3, 3] = _floats(trans[k][1], 3)[0]
        assert np.allclose(pose, fused.world_from_cam[k], atol=1e-6)
        assert np.allclose(_floats(K[k][1], 9).reshape(3, 3).T, fused.intrinsics[k], atol=1e-4)
        assert _floats(res[k][1], 2)[0].tolist() == [W, H]
    path = _chunks(rrd, "/world/camera_path", "LineStrips3D:strips")
    assert np.allclose(_floats(path[None][1].flatten(), 3), fused.world_from_cam[:, :3, 3], atol=1e-6)
    assert sorted(_chunks(rrd, "/world/camera/image", "EncodedImage:blob")) == list(range(T))
    assert sorted(_chunks(rrd, "/world/camera/depth", "DepthImage:buffer")) == list(range(T))


def test_subsampling_filtering_and_confidence_colours(store, tmp_path, monkeypatch):
    rrd = _record(store, tmp_path, monkeypatch, "--max-points", "100", "--drop-low-confidence", "0.5",
                  "--color", "confidence")
    points = _chunks(rrd, "/world/points", "Points3D:positions")
    colors = _chunks(rrd, "/world/points", "Points3D:colors")
    for k in (0, T - 1):
        _, want, rgb = _expected(store, k, drop=0.5)
        got = _floats(points[k][1], 3)
        assert len(want) > 100 and got.shape == (100, 3)
        assert np.array_equal(got[[0, -1]], want[[0, -1]].astype(np.float64))  # evenly spaced, ends kept
        rows = {tuple(p) for p in want.astype(np.float64)}
        assert all(tuple(p) in rows for p in got)
        pick = np.linspace(0, len(want) - 1, 100).round().astype(int)
        conf = _rgb(colors[k][1])
        assert len(np.unique(conf, axis=0)) > 5 and not np.array_equal(conf, rgb[pick])
        fused = store.read_fused("v0")
        shown = fused.confidence[k][fused.valid[k] & (fused.confidence[k] >= np.quantile(
            fused.confidence[fused.valid], 0.5))][pick]
        green = conf[np.argsort(shown, kind="stable"), 1].astype(int)  # viridis' green rises with the value
        assert np.all(np.diff(green) >= 0) and green[-1] - green[0] > 50


def test_no_display_unknown_or_unfused_video_are_one_line_errors(store, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    cases = {("v0",): "use --save FILE.rrd", ("nope", "--save", str(tmp_path / "a.rrd")): "no video 'nope'",
             ("v1", "--save", str(tmp_path / "b.rrd")): "not fused",
             ("v0", "--save", str(tmp_path / "no" / "c.rrd")): "does not exist"}
    for args, problem in cases.items():
        assert main(["view", store.location, "--video", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and problem in err, err
    assert not any(tmp_path.iterdir())


def test_selection_helpers():
    from geo4d.viewer import ViewOptions, confidence_threshold, select_points

    v = np.array([[True, True, False, True]])
    c = np.array([[1.0, 3.0, 9.0, 2.0]])
    assert confidence_threshold(c, v, 0.0) == 1.0
    assert select_points(v, c, 2.0, 10).tolist() == [1, 3]
    assert select_points(v, c, 0.0, 2).tolist() == [0, 3]
    assert np.isinf(confidence_threshold(c, ~np.ones_like(v), 0.1))
    with pytest.raises(ValueError, match="color"):
        ViewOptions(color="depth")
