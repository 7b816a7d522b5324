"""Report figures: written by reconstruct and archive runs into STORE/reports/, redrawn by `geo4d report`."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geo4d_cli import main

T, H, W, FPS = 20, 48, 64, 10


def _synth(d: Path, name: str, seed: int) -> Path:
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth

    r = render(make_scene(seed=seed, n_frames=T, height=H, width=W))
    write_video(d / f"{name}.mp4", r.frames, fps=FPS)
    write_ground_truth(d / f"{name}.gt", r.geometry)
    return d / f"{name}.mp4"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scenes")
    for i in range(2):
        _synth(d, f"clip_{i}", 80 + i)
    good = (d / "clip_0.mp4").read_bytes()
    (d / "corrupt.mp4").write_bytes(good[: len(good) // 3])
    return d


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A store built stage by stage (no Prefect): v0 fused and evaluated, v1 only decoded."""
    from pipeline import stages
    from storage.store import Store

    d = tmp_path_factory.mktemp("staged")
    s = Store(d / "s.zarr")
    for i in range(2):
        stages.decode_stage(s, str(_synth(d, f"v{i}", 90 + i)), video_id=f"v{i}")
    stages.windows_stage(s, "v0", {"kind": "synthetic"})
    stages.fuse_stage(s, "v0")
    stages.evaluate_stage(s, "v0")
    return s


def _pixels(png: bytes | Path) -> np.ndarray:
    data = png.read_bytes() if isinstance(png, Path) else png
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def _not_blank(px: np.ndarray) -> None:
    assert px.shape[0] > 400 and px.shape[1] > 600
    assert px.astype(float).var() > 500  # frames, colour maps and plots, not a flat image


def test_reconstruct_writes_the_report_and_geo4d_report_redraws_it(scenes, tmp_path, capsys, prefect_env):
    from storage.store import Store

    store = tmp_path / "s.zarr"
    assert main(["reconstruct", str(scenes / "clip_0.mp4"), "--store", str(store), "--predictor", "synthetic"]) == 0
    out = capsys.readouterr().out
    vid = Store(store, mode="r").video_ids()[0]
    stored = store / "reports" / f"{vid}.png"
    assert f"report: {stored}" in out
    _not_blank(_pixels(stored))
    assert sorted(p.name for p in stored.parent.iterdir()) == [f"{vid}.png", "zarr.json"]  # no temporary left
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import zarr

        assert sorted(k for k, _ in zarr.open_group(str(store), mode="r").members()) == ["leases", "reports", "videos"]
    assert main(["verify", str(store)]) == 0
    redrawn = tmp_path / "again.png"
    assert main(["report", str(store), "--video", vid, str(redrawn)]) == 0
    assert str(redrawn) in capsys.readouterr().out
    assert np.array_equal(_pixels(redrawn), _pixels(stored))
    # a rerun whose stages are all skipped finds the report current
    mtime = stored.stat().st_mtime_ns
    assert main(["reconstruct", str(scenes / "clip_0.mp4"), "--store", str(store), "--predictor", "synthetic"]) == 0
    assert stored.stat().st_mtime_ns == mtime and f"report: {stored}" in capsys.readouterr().out


def test_no_report_writes_none(scenes, tmp_path, capsys, prefect_env):
    store = tmp_path / "s.zarr"
    assert main(["reconstruct", str(scenes / "clip_1.mp4"), "--store", str(store), "--predictor", "synthetic",
                 "--no-report", "--no-evaluate"]) == 0
    assert "report:" not in capsys.readouterr().out
    assert not (store / "reports").exists()


def test_a_report_that_cannot_be_drawn_does_not_fail_the_video(scenes, tmp_path, monkeypatch, prefect_env):
    import pipeline.report
    from flows.reconstruct import reconstruct_video
    from storage.store import Store

    def broken(store, video_id):
        raise RuntimeError("simulated drawing failure")

    monkeypatch.setattr(pipeline.report, "draw_report", broken)
    res = reconstruct_video(str(scenes / "clip_1.mp4"), str(tmp_path / "s.zarr"), predictor={"kind": "synthetic"})
    assert res["report"]["location"] is None and "simulated drawing failure" in res["report"]["error"]
    recs = Store(tmp_path / "s.zarr", mode="r").stage_records(res["video_id"])
    assert [recs[s]["status"] for s in ("decode", "windows", "fuse", "evaluate")] == ["complete"] * 4


def test_the_figure_says_what_it_shows(staged, monkeypatch):
    import pipeline.report
    from storage.ground_truth import read_ground_truth

    seen = {}
    monkeypatch.setattr(pipeline.report, "write_summary_png", lambda *a, **k: seen.update(args=a, **k))
    pipeline.report.draw_report(staged, "v0")
    fused, info = staged.read_fused("v0"), seen["info"]
    assert (info.video_id, info.n_frames, info.fps, info.synthetic) == ("v0", T, FPS, True)
    assert np.allclose(info.focal_px, np.median(fused.intrinsics[:, [0, 1], [0, 1]], axis=0))
    assert info.metrics == staged.stage_record("v0", "evaluate")["metrics"] and info.metrics["abs_rel"] < 0.01
    _, frames, depth, conf, poses, gt = seen["args"][:6]
    assert seen["shown"] == [0, 6, 13, 19] and np.array_equal(frames, staged.read_frames("v0")[[0, 6, 13, 19]])
    assert np.array_equal(depth, fused.depth[[0, 6, 13, 19]]) and np.array_equal(conf, fused.confidence[[0, 6, 13, 19]])
    assert np.allclose(poses, fused.world_from_cam)
    gt_dir = staged.stage_record("v0", "evaluate")["parameters"]["ground_truth"]
    assert np.allclose(gt, read_ground_truth(gt_dir).world_from_cam)
    title = info.title()
    assert "v0 — 20 frames at 10 fps" in title and "SYNTHETIC" in title and "Abs Rel" in title


def test_report_command_errors_are_one_line(staged, tmp_path, capsys):
    cases = {("nope", str(tmp_path / "a.png")): "no video 'nope'", ("v1", str(tmp_path / "b.png")): "not fused",
             ("v0", str(tmp_path / "no" / "c.png")): "does not exist", ("v0", str(tmp_path)): "is a directory"}
    for (vid, out), problem in cases.items():
        assert main(["report", staged.location, "--video", vid, out]) == 2, vid
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and problem in err, err
    assert not any(tmp_path.iterdir())


def test_report_storage_round_trip(staged):
    from geo4d.errors import StoreError
    from storage.reports import has_report, read_report, report_location, write_report
    from storage.store import Store

    via_url = Store(f"file://{staged.location}")
    assert write_report(via_url, "v1", b"\x89PNG fake") == report_location(via_url, "v1")
    assert read_report(staged, "v1") == b"\x89PNG fake" and has_report(staged, "v1")
    assert sorted(p.name for p in (Path(staged.location) / "reports").iterdir()) == ["v1.png", "zarr.json"]
    with pytest.raises(StoreError, match="no report of video 'v0'"):
        read_report(staged, "v0")
    with pytest.raises(StoreError, match="no video 'zz'"):
        write_report(staged, "zz", b"x")


def test_the_archive_writes_one_report_per_complete_video(scenes, tmp_path, monkeypatch, capsys, prefect_env):
    import pipeline.report
    from storage.store import Store

    original = pipeline.report.draw_report

    def fails_for_clip_1(store, video_id):
        if video_id.startswith("clip_1"):
            raise RuntimeError("simulated drawing failure")
        return original(store, video_id)

    monkeypatch.setattr(pipeline.report, "draw_report", fails_for_clip_1)
    store = tmp_path / "a.zarr"
    rc = main(["archive", str(scenes), "--store", str(store), "--workers", "0", "--predictor", "synthetic"])
    out = capsys.readouterr().out
    assert rc == 1 and "2 complete, 1 failed" in out, out  # corrupt.mp4 fails; clip_1 completes without a figure
    ids = {v.split("-")[0]: v for v in Store(store, mode="r").video_ids()}
    assert sorted(p.name for p in (store / "reports").glob("*.png")) == [f"{ids['clip_0']}.png"]
    _not_blank(_pixels(store / "reports" / f"{ids['clip_0']}.png"))
    assert "reports: 1 in" in out and f"report not written for {ids['clip_1']}: RuntimeError" in out


def test_deleting_a_video_removes_its_report(tmp_path):
    from conftest import write_synthetic_videos
    from pipeline import stages
    from storage.reports import has_report, write_report
    from storage.store import Store

    s = Store(tmp_path / "s.zarr")
    for i, path in enumerate(write_synthetic_videos(tmp_path, [95, 96], n_frames=16, height=32, width=48)):
        stages.decode_stage(s, str(path), video_id=f"v{i}")
        write_report(s, f"v{i}", b"\x89PNG fake")
    s.delete_video("v0")
    assert not has_report(s, "v0") and has_report(s, "v1")
    assert s.video_ids() == ["v1"]
