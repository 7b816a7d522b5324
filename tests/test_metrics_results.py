"""Result tables (Parquet), dataset means, paper tables, and the `geo4d metrics` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geo4d_cli import main as cli
from geo4d.datasets.formats import write_depth_png, write_dpt
from geo4d.errors import InputError
from geo4d.metrics import depth_metrics
from geo4d.metrics.benchmark import (
    PAPER_DEPTH,
    dataset_means,
    render_benchmarks_markdown,
    render_benchmarks_page,
    sequence_metrics,
)
from geo4d.metrics.trajectory import Trajectory, write_tum_trajectory
from storage.results import default_results_dir, list_result_files, read_results, results_table, write_results


def test_dataset_means_pixel_weighted_depth_and_per_sequence_poses():
    rows = [
        {"depth_evaluated": True, "abs_rel": 0.1, "delta_1_25": 0.9, "valid_pixels": 100, "n_frames": 5,
         "pose_evaluated": True, "ate": 1.0, "rpe_trans": 0.1, "rpe_rot": 1.0, "ate_rel": 0.1},
        {"depth_evaluated": True, "abs_rel": 0.4, "delta_1_25": 0.5, "valid_pixels": 300, "n_frames": 5,
         "pose_evaluated": True, "ate": 3.0, "rpe_trans": 0.3, "rpe_rot": 2.0, "ate_rel": 0.3},
        {"depth_evaluated": False, "pose_evaluated": True, "ate": 0.0, "n_frames": 5},  # a failed pose (0) is dropped
    ]
    for r in rows[:2]:
        for k in ("sq_rel", "rmse", "log_rmse", "delta_1_25_2", "delta_1_25_3"):
            r[k] = r["abs_rel"]
    m = dataset_means(rows)
    assert m["abs_rel"] == pytest.approx((0.1 * 100 + 0.4 * 300) / 400)
    assert m["delta_1_25"] == pytest.approx((0.9 * 100 + 0.5 * 300) / 400)
    assert m["valid_pixels"] == 400 and m["n_frames"] == 15
    assert m["ate"] == pytest.approx(2.0) and m["rpe_rot"] == pytest.approx(1.5)


def test_results_round_trip_and_metadata(tmp_path):
    rows = [
        {"row": "sequence", "dataset": "bonn", "sequence": "crowd2", "method": "m", "n_frames": 110,
         "depth_evaluated": True, "abs_rel": 0.05, "delta_1_25": 0.97, "valid_pixels": 1234,
         "pose_evaluated": True, "ate": 0.01, "rpe_rot": float("nan")},
        {"row": "sequence", "dataset": "bonn", "sequence": "crowd3", "method": "m", "error": "InputError: x"},
        {"row": "mean", "dataset": "bonn", "sequence": "mean", "method": "m", "abs_rel": 0.05},
    ]
    meta = {"dataset": "bonn", "protocol": {"depth": {"name": "bonn-video-depth", "max_depth": 70.0}}}
    path = write_results(tmp_path / "res" / "run1.parquet", rows, meta)
    back, bmeta = read_results(path)
    assert [r["sequence"] for r in back] == ["crowd2", "crowd3", "mean"]
    assert back[0]["abs_rel"] == 0.05 and back[0]["valid_pixels"] == 1234 and back[0]["rpe_rot"] is None
    assert back[1]["error"] == "InputError: x" and back[1]["abs_rel"] is None
    assert bmeta["protocol"]["depth"]["name"] == "bonn-video-depth" and bmeta["format"] == "geo4d-benchmark-results"
    assert "created_at" in bmeta
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    assert schema.field("valid_pixels").type == "int64" and schema.field("abs_rel").type == "double"
    assert list_result_files(tmp_path / "res") == [str(tmp_path / "res" / "run1.parquet")]
    assert default_results_dir("/x/store.zarr/") == "/x/store.zarr.results"


def test_results_refuse_bad_rows_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="unknown columns"):
        results_table([{"row": "mean", "bogus": 1}])
    with pytest.raises(ValueError, match="'row' must be"):
        results_table([{"row": "total"}])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match="not a geo4d results table"):
        read_results(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"nope")
    with pytest.raises(InputError, match="not a readable Parquet"):
        read_results(tmp_path / "junk.parquet")
    with pytest.raises(InputError, match="no such results table"):
        read_results(tmp_path / "none.parquet")


def test_paper_tables_and_our_rows():
    md = render_benchmarks_markdown({"ours": {"bonn": {"depth_evaluated": True, "abs_rel": 0.0612, "delta_1_25": 0.9654},
                                              "tum": {"pose_evaluated": True, "ate": 0.07, "rpe_trans": 0.01, "rpe_rot": 0.6}}})
    assert "| Geo4D (paper) | 0.205 | 73.5 | 0.059 | 97.2 | 0.086 | 93.7 |" in md
    assert "| MonST3R (paper) | 0.108 | — | 0.732 | 0.063 | — | 1.217 |" in md
    assert "| **ours** (this pipeline) | — | — | 0.061 | 96.5 | — | — |" in md
    assert "| **ours** (this pipeline) | — | — | — | 0.070 | 0.010 | 0.600 |" in md
    assert set(PAPER_DEPTH) == {"Depth-Anything-V2", "DepthCrafter", "MonST3R", "Geo4D"}
    page = render_benchmarks_page({})
    assert "No result of this pipeline yet" in page and "geo4d metrics report" in page


def test_sequence_metrics_follows_the_protocol_steps():
    """Predictions resized (bicubic) to the GT size, confidence resized and thresholded as the
    alignment mask, the dataset's depth settings, Sim(3) poses — same as composing the parts."""
    from geo4d.datasets.formats import resize_depth_to, resize_mask_to
    from geo4d.metrics import depth_metrics_protocol, pose_metrics

    rng = np.random.default_rng(0)
    v, u = np.mgrid[0:8, 0:12]
    gt = np.stack([5.0 + u + 0.5 * v + k for k in range(3)]).astype(np.float32)
    gt[:, 0, :3] = 0.0  # missing
    gt[:, -1, -1] = 75.0  # beyond Bonn's cap
    pred = (0.5 * gt[:, ::2, ::2] + 1.0 + rng.normal(0, 0.05, (3, 4, 6))).astype(np.float32)
    conf = np.ones_like(pred)
    conf[:, :, -1] = 0.0
    gt_pose = np.tile(np.eye(4), (3, 1, 1))
    gt_pose[:, 0, 3] = [0, 1, 3]
    gt_pose[:, 1, 3] = [0, 1, 0]
    est = gt_pose.copy()
    est[:, :3, 3] *= 2.0
    m = sequence_metrics("bonn", pred, conf, est, None, gt_depth=gt, gt_world_from_cam=gt_pose)
    ref = depth_metrics_protocol(resize_depth_to(pred, (8, 12)), gt, "bonn", align_mask=resize_mask_to(conf > 0, (8, 12)))
    assert m["depth_evaluated"] and m["pose_evaluated"]
    assert m["valid_pixels"] == 3 * (8 * 12 - 3 - 1) == ref["valid_pixels"]
    assert m["abs_rel"] == ref["abs_rel"] and m["delta_1_25"] == ref["delta_1_25"]
    assert m["ate"] == pytest.approx(pose_metrics(est, gt_pose)["ate"]) and m["ate"] < 1e-12
    no_mask = depth_metrics_protocol(resize_depth_to(pred, (8, 12)), gt, "bonn")
    assert no_mask["scale"] != ref["scale"]  # the mask matters for the fit
    m = sequence_metrics("tum", None, None, est, None, gt_world_from_cam=gt_pose)
    assert not m["depth_evaluated"] and m["pose_evaluated"]


# ---- CLI ---------------------------------------------------------------------------------------------
def test_cli_depth_matches_the_function(tmp_path, capsys):
    rng = np.random.default_rng(1)
    gt = rng.uniform(1, 80, (3, 6, 8)).astype(np.float32)
    pred = (0.3 * gt + 0.5 + rng.normal(0, 0.3, gt.shape)).astype(np.float32)
    for i in range(3):
        write_dpt(tmp_path / "gt" / f"frame_{i + 1:04d}.dpt", gt[i])
        np.save(tmp_path / f"pred_{i}.npy", pred[i])
    np.save(tmp_path / "all.npy", pred)
    rc = cli(["metrics", "depth", "--gt", str(tmp_path / "gt"), "--pred", *(str(tmp_path / f"pred_{i}.npy") for i in range(3)),
              "--dataset", "sintel", "--align", "exact", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    ref = depth_metrics(pred, gt, align="scale_shift_l1", max_depth=70, post_clip_max=70)
    assert out["abs_rel"] == pytest.approx(ref["abs_rel"], rel=1e-9) and out["valid_pixels"] == ref["valid_pixels"]
    assert out["max_depth"] == 70
    rc = cli(["metrics", "depth", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "all.npy"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["abs_rel"] == pytest.approx(depth_metrics(pred, gt)["abs_rel"], rel=1e-9)
    assert cli(["metrics", "depth", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred_0.npy")]) == 2
    assert "1 predicted depth maps for 3 ground-truth maps" in capsys.readouterr().err
    write_depth_png(tmp_path / "png" / "a.png", gt[0], 256.0)
    assert cli(["metrics", "depth", "--gt", str(tmp_path / "png"), "--pred", str(tmp_path / "pred_0.npy")]) == 2
    assert "needs its scale" in capsys.readouterr().err
    rc = cli(["metrics", "depth", "--gt", str(tmp_path / "png"), "--pred", str(tmp_path / "pred_0.npy"),
              "--dataset", "kitti", "--align", "exact"])
    assert rc == 0 and "abs_rel" in capsys.readouterr().out


def test_cli_poses_json_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(2)
    t = np.arange(30) * 0.1
    gt = np.tile(np.eye(4), (30, 1, 1))
    gt[:, :3, 3] = np.cumsum(rng.normal(size=(30, 3)), 0)
    est = gt.copy()
    est[:, :3, 3] = 2 * gt[:, :3, 3] + rng.normal(size=(30, 3)) * 0.01
    write_tum_trajectory(tmp_path / "gt.txt", Trajectory.from_poses(t, gt))
    write_tum_trajectory(tmp_path / "est.txt", Trajectory.from_poses(t + 0.003, est))
    outs = {}
    for backend in ("geo4d", "evo"):
        assert cli(["metrics", "poses", "--gt", str(tmp_path / "gt.txt"), "--est", str(tmp_path / "est.txt"),
                    "--json", "--backend", backend]) == 0
        outs[backend] = json.loads(capsys.readouterr().out)
    assert set(outs["geo4d"]) >= {"ate", "rpe_trans", "rpe_rot"}
    for k in ("ate", "rpe_trans", "rpe_rot"):
        assert outs["geo4d"][k] == pytest.approx(outs["evo"][k], rel=1e-6)
    assert cli(["metrics", "poses", "--gt", str(tmp_path / "gt.txt"), "--est", str(tmp_path / "est.txt"),
                "--max-diff", "0.001"]) == 2
    assert "no matching timestamps" in capsys.readouterr().err


def test_cli_poses_on_real_trajectories(shared_dir, capsys):
    tum = shared_dir / "data" / "tum"
    for ref in json.loads((tum / "evo_reference.json").read_text()):
        assert cli(["metrics", "poses", "--gt", str(tum / ref["gt"]), "--est", str(tum / ref["est"]), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        for k in ("ate", "rpe_trans", "rpe_rot"):
            assert out[k] == pytest.approx(ref[k], rel=1e-6)


def test_cli_report_renders_latest_run(tmp_path, capsys):
    base = {"row": "mean", "dataset": "bonn", "sequence": "mean", "method": "mine", "depth_evaluated": True}
    write_results(tmp_path / "r" / "a.parquet", [{**base, "abs_rel": 0.2, "delta_1_25": 0.5}],
                  {"dataset": "bonn", "method": "mine", "created_at": "2026-01-01T00:00:00+00:00"})
    write_results(tmp_path / "r" / "b.parquet", [{**base, "abs_rel": 0.0612, "delta_1_25": 0.9654}],
                  {"dataset": "bonn", "method": "mine", "created_at": "2026-02-01T00:00:00+00:00"})
    assert cli(["metrics", "report", str(tmp_path / "r"), "--out", str(tmp_path / "page.md")]) == 0
    page = (tmp_path / "page.md").read_text()
    assert "| **mine** (this pipeline) | — | — | 0.061 | 96.5 | — | — |" in page
    assert "0.200" not in page
    assert cli(["metrics", "report", str(tmp_path / "none")]) == 2
