"""`geo4d evaluate` / the evaluate-benchmark flow on a tiny benchmark in Sintel's native layout,
made from synthetic scenes, with the synthetic predictor (a test instrument fed with the reader's
ground truth)."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d_cli import main as cli

pytestmark = pytest.mark.usefixtures("prefect_env")


@pytest.fixture(scope="module")
def sintel_root(tmp_path_factory):
    from geo4d.datasets.sintel import write_sintel_sequence
    from geo4d.synthetic import make_scene, render

    root = tmp_path_factory.mktemp("bench") / "training"
    for seed, name in ((3, "alley_2"), (4, "bamboo_1")):  # alley_2 is a pose sequence, bamboo_1 depth only
        v = render(make_scene(seed, n_frames=16, height=40, width=56))
        g = v.geometry
        write_sintel_sequence(root, name, v.frames, g.depth, g.intrinsics, g.world_from_cam)
    return root


def test_evaluate_sintel_layout_end_to_end_and_resume(sintel_root, tmp_path, capsys):
    from storage.results import read_results
    from storage.store import Store

    store = tmp_path / "store.zarr"
    args = ["evaluate", "--dataset", "sintel", "--root", str(sintel_root), "--store", str(store),
            "--input-size", "56x40", "--run-name", "first"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC test instrument" in out and "alley_2" in out
    rows, meta = read_results(str(store) + ".results/first.parquet")
    by = {r["sequence"]: r for r in rows}
    assert set(by) == {"alley_2", "bamboo_1", "mean"}
    a, b, mean = by["alley_2"], by["bamboo_1"], by["mean"]
    assert a["depth_evaluated"] and a["pose_evaluated"] and b["depth_evaluated"] and not b["pose_evaluated"]
    # clean synthetic predictions: the fusion recovers the geometry
    assert a["abs_rel"] < 0.02 and a["delta_1_25"] > 0.98 and a["ate"] < 1e-3 and a["rpe_rot"] < 0.05
    assert b["ate"] is None and b["error"] is None
    assert mean["valid_pixels"] == a["valid_pixels"] + b["valid_pixels"]
    w = np.array([a["valid_pixels"], b["valid_pixels"]], float)
    assert mean["abs_rel"] == pytest.approx(np.average([a["abs_rel"], b["abs_rel"]], weights=w))
    assert mean["ate"] == pytest.approx(a["ate"])  # poses: mean over pose sequences only
    assert meta["protocol"]["depth"]["name"] == "sintel-video-depth"
    assert meta["protocol"]["depth"]["max_depth"] == 70.0 and meta["protocol"]["depth"]["align"] == "scale_shift_l1_adam"
    assert meta["synthetic"] and meta["input_size"] == [56, 40]
    summary = (store.parent / "store.zarr.results" / "first.md").read_text()
    assert "test instrument" in summary and "| Geo4D (paper) | 0.205 | 73.5" in summary

    s = Store(store, mode="r")
    recs = {v: s.stage_records(v) for v in s.video_ids()}
    assert set(recs) == {"sintel-alley_2", "sintel-bamboo_1"}
    assert all(r[st]["status"] == "complete" for r in recs.values() for st in ("decode", "windows", "fuse", "evaluate"))

    # a rerun skips every stage (same records) and gives the same numbers
    assert cli(args[:-1] + ["second"]) == 0
    capsys.readouterr()
    s = Store(store, mode="r")
    for v, r in recs.items():
        assert s.stage_records(v) == r
    rows2, _ = read_results(str(store) + ".results/second.parquet")
    assert [r["abs_rel"] for r in rows2] == [r["abs_rel"] for r in rows]

    # the exact L1 fit is a different protocol setting: only the evaluate stage reruns
    assert cli(args[:-1] + ["exact", "--depth-align", "exact", "--sequences", "bamboo_1"]) == 0
    capsys.readouterr()
    s = Store(store, mode="r")
    assert s.stage_records("sintel-bamboo_1")["fuse"] == recs["sintel-bamboo_1"]["fuse"]
    assert s.stage_records("sintel-bamboo_1")["evaluate"] != recs["sintel-bamboo_1"]["evaluate"]
    rows3, meta3 = read_results(str(store) + ".results/exact.parquet")
    assert meta3["protocol"]["depth"]["align"] == "scale_shift_l1" and len(rows3) == 2

    # the paper page from these tables
    page = tmp_path / "benchmarks.md"
    assert cli(["metrics", "report", str(store) + ".results", "--out", str(page)]) == 0
    text = page.read_text()
    assert "**synthetic predictor (test instrument)** (this pipeline)" in text


def test_evaluate_records_a_broken_sequence_and_goes_on(sintel_root, tmp_path, capsys):
    import shutil

    from storage.results import read_results

    root = tmp_path / "training"
    shutil.copytree(sintel_root, root)
    bad = sorted((root / "depth" / "bamboo_1").glob("*.dpt"))[3]
    bad.write_bytes(bad.read_bytes()[:100])
    store = tmp_path / "s.zarr"
    rc = cli(["evaluate", "--dataset", "sintel", "--root", str(root), "--store", str(store),
              "--input-size", "56x40", "--run-name", "r"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "1 sequence(s) failed: bamboo_1" in err
    rows, meta = read_results(str(store) + ".results/r.parquet")
    by = {r["sequence"]: r for r in rows}
    assert "frame_0004.dpt: wrong size" in by["bamboo_1"]["error"]
    assert by["alley_2"]["error"] is None and by["mean"]["abs_rel"] == pytest.approx(by["alley_2"]["abs_rel"])
    assert meta["failed"] == ["bamboo_1"]


def test_evaluate_bad_inputs(sintel_root, tmp_path, capsys):
    assert cli(["evaluate", "--dataset", "sintel", "--root", str(tmp_path / "nope"), "--store", str(tmp_path / "s")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert cli(["evaluate", "--dataset", "bonn", "--root", str(tmp_path), "--store", str(tmp_path / "s")]) == 2
    assert "no rgbd_bonn_" in capsys.readouterr().err
    assert cli(["evaluate", "--dataset", "sintel", "--root", str(sintel_root), "--store", str(tmp_path / "s"),
                "--ground-truth", str(tmp_path)]) == 2
    assert "--ground-truth: not used by geo4d evaluate" in capsys.readouterr().err
    assert cli(["evaluate", "--dataset", "sintel", "--root", str(sintel_root), "--store", str(tmp_path / "s"),
                "--sequences", "alley_2,nope"]) == 2
    assert "--sequences: nope not found" in capsys.readouterr().err
    assert cli(["evaluate", "--dataset", "sintel", "--root", str(sintel_root), "--store", str(tmp_path / "s"),
                "--input-size", "big"]) == 2
    assert "expected WxH" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing written on bad input
