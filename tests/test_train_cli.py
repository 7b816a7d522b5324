"""``geo4d train`` end to end on the tiny network (random-initialised: a synthetic stand-in): the run,
its validations, its official-format result loaded by ``geo4d reconstruct``, the Prefect flow and its
artifacts, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import write_synthetic_videos
from geo4d_cli import main

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, **changes) -> Path:
    data = {"network": str(ROOT / "configs/train/tiny-network.yaml"), "clip_frames": 8, "checkpoint_every": 3,
            "log_every": 2, "validation": {"every": 4, "clips": 1},
            "phases": [{"name": "vae", "train": "pointmap_vae", "steps": 4, "lr": 1e-3, "sizes": [[32, 48]]},
                       {"name": "unet", "train": "unet", "steps": 2, "sizes": [[32, 48]],
                        "modalities": {"pointmap": 1.0, "ray": 1.0}, "ramp_steps": 2}]} | changes
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step run with the full-pipeline validation at steps 0, 4 and 6 (what `geo4d train` prints)."""
    d = tmp_path_factory.mktemp("train")
    run = d / "run"
    assert main(["train", str(_recipe(d)), "--out", str(run), "--device", "cpu"]) == 0
    return run


def test_a_run_validates_through_the_whole_pipeline(trained, capsys):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in rows if r["kind"] == "validation"]
    assert [v["step"] for v in validations] == [0, 4, 6]
    for v in validations:  # the losses and the sample → fuse → metrics validation, every time
        assert v["pipeline_videos"] == 2 and {"vae_l1", "denoise_loss", "pipeline_abs_rel"} <= set(v)
        assert v["pipeline_failed"] == 2 or 0 < v["pipeline_abs_rel"] < 10
    assert validations[1]["vae_l1"] < validations[0]["vae_l1"]  # 4 decoder steps at lr 1e-3 already help
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4, 6]


def test_the_result_is_what_geo4d_reconstruct_loads(trained, tmp_path, capsys):
    """…at the trained size, from a video of another size: the evaluation brings the video's ground truth
    to the network's pixels (through the framing) instead of stopping at the size mismatch."""
    from storage.store import Store

    video, = write_synthetic_videos(tmp_path, [5], n_frames=20, height=48, width=64)
    final = trained / "final"
    rc = main(["reconstruct", str(video), "--store", str(tmp_path / "runs.zarr"), "--predictor", "geo4d",
               "--config", str(final / "config.yaml"), "--checkpoint", str(final / "model.ckpt"),
               "--pointmap-vae", str(final / "vae.ckpt"), "--clip-cache", str(final / "context-cache"),
               "--image-size", "32x48", "--device", "cpu", "--no-report"])
    assert rc == 0, capsys.readouterr()
    store = Store(tmp_path / "runs.zarr")
    vid, = store.video_ids()
    record = store.stage_record(vid, "evaluate")
    assert "48×64 to the network's 32×48" in record["ground_truth"] and record["metrics"]["abs_rel"] > 0
    assert "SYNTHETIC STAND-IN" in (final / "README.txt").read_text()


def test_the_prefect_flow_publishes_loss_and_validation_artifacts(tmp_path, prefect_env):
    from prefect.artifacts import Artifact

    from flows.train import train_geo4d

    out = train_geo4d(str(_recipe(tmp_path, validation={"every": 0, "clips": 1})), str(tmp_path / "run"),
                      validate_pipeline=False)
    assert out["step"] == 6 and Path(out["model_ckpt"]).is_file()
    losses = Artifact.get("train-loss")
    assert losses is not None and "vae" in str(losses.data)
    validation = Artifact.get("train-validation")
    assert validation is not None and "denoise_loss" in str(validation.data)


@pytest.mark.parametrize("make_args, message", [
    (lambda d: [str(d / "missing.yaml"), "--out", str(d / "r")], "training recipe not found"),
    (lambda d: [str(_recipe(d)), "--out", str(d / "r"), "--resume"], "nothing to resume"),
    (lambda d: [str(_recipe(d)), "--out", str(d / "r"), "--data", str(d / "nowhere")], "no such dataset directory"),
    (lambda d: [str(_recipe(d)), "--out", str(d / "r"), "--init-pointmap-vae", str(_recipe(d))],
     "needs --init-checkpoint"),
    (lambda d: [str(_recipe(d)), "--out", str(d / "r"), "--max-steps", "0"], "--max-steps must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make_args, message):
    assert main(["train", *make_args(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
