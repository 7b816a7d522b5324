"""``--data`` locations of ``geo4d train`` → clip sources (pipeline/training.py): exported datasets,
webdataset shards (random access by tar offsets) and the synthetic scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geo4d.errors import InputError
from geo4d.synthetic import make_scene, render


@pytest.fixture(scope="module")
def recipe():
    from geo4d_model.train.recipe import load_recipe

    return load_recipe("configs/train/tiny-cpu.yaml")


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """Two rendered scenes (ground truth as the 'reconstruction') written as webdataset shards."""
    from storage.shards import ShardSample, shot_samples, slice_sample, write_shards

    out = tmp_path_factory.mktemp("shards")
    samples = []
    for seed in (3, 4):
        video = render(make_scene(seed, n_frames=20, height=32, width=48))
        g = video.geometry
        depth = np.where(np.isfinite(g.depth), g.depth, 0.0).astype(np.float32)
        shot = {"frames": video.frames, "depth": depth, "confidence": (depth > 0).astype(np.float32),
                "intrinsics": g.intrinsics, "world_from_cam": g.world_from_cam}
        for ref in shot_samples(f"v{seed}", 0, 20, unit="shot"):
            samples.append(slice_sample(ref, shot, scores={"window_agreement": 0.01}, provenance={"fps": 12.0}))
    assert all(isinstance(s, ShardSample) for s in samples)
    write_shards(samples, out, target_bytes=100_000, seed=0)
    return out, {f"v{seed}": render(make_scene(seed, n_frames=20, height=32, width=48)) for seed in (3, 4)}


def test_shard_reader_reads_the_written_arrays_by_offset(shard_dir):
    from storage.training_data import ShardReader

    root, videos = shard_dir
    reader = ShardReader(root)
    assert sorted(v["n_frames"] for v in reader.videos) == [20, 20]
    assert {v["fps"] for v in reader.videos} == {12.0}
    for i, entry in enumerate(reader.videos):
        clip = reader(i, 4, 8)
        truth = videos[entry["id"].split("_shot")[0]]
        np.testing.assert_array_equal(clip["rgb"], truth.frames[4:12])
        np.testing.assert_allclose(clip["intrinsics"], truth.geometry.intrinsics[4:12], rtol=1e-6)
        assert clip["depth"].shape == (8, 32, 48) and clip["world_from_cam"].shape == (8, 4, 4)
    with pytest.raises(InputError, match="no sample 5"):
        reader(5, 0, 8)


def test_shards_as_a_training_source(shard_dir, recipe):
    from pipeline.training import clip_source

    root, _ = shard_dir
    source = clip_source(str(root), recipe)
    a, b = source.clip(0, (32, 48), 16), source.clip(0, (32, 48), 16)
    np.testing.assert_array_equal(a["pointmap"], b["pointmap"])
    assert a["pointmap"].shape == (16, 3, 32, 48) and a["valid"].any()
    assert source.clip(1, (24, 64), 16)["frames"].shape == (16, 3, 24, 64)


def test_synthetic_locations(recipe):
    from pipeline.training import clip_source, clip_sources

    default, = clip_sources([], recipe)
    seeded = clip_source("synthetic:7", recipe)
    assert "synthetic" in default.name and seeded.seed == 7 and default.seed == recipe.synthetic.seed
    with pytest.raises(InputError, match="synthetic:SEED"):
        clip_source("synthetic:x", recipe)


def test_bad_locations_are_one_line_errors(tmp_path, recipe):
    from pipeline.training import clip_source

    with pytest.raises(InputError, match="no such dataset directory"):
        clip_source(str(tmp_path / "missing"), recipe)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither a `geo4d export` directory"):
        clip_source(str(tmp_path / "empty"), recipe)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three SYNTHETIC videos reconstructed (synthetic predictor) and exported with two splits."""
    import pyarrow.parquet as pq

    from conftest import write_synthetic_videos
    from geo4d_cli import main
    from pipeline import stages
    from storage.store import Store

    d = tmp_path_factory.mktemp("loop")
    store = Store(d / "s.zarr")
    for i, path in enumerate(write_synthetic_videos(d, [70, 71, 72], n_frames=20)):
        vid = stages.decode_stage(store, str(path), video_id=f"v{i}").video_id
        stages.shots_stage(store, vid)
        stages.windows_stage(store, vid, {"kind": "synthetic"})
        stages.fuse_stage(store, vid)
    out = d / "ds"
    assert main(["export", store.location, str(out), "--split", "train=0.5,validation=0.5", "--split-seed", "1",
                 "--format", "zarr,webdataset"]) == 0
    rows = pq.read_table(out / "index.parquet").to_pylist()
    return out, {r["video_id"]: r["split"] for r in rows if r["skipped"] is None}


def test_an_export_trains_on_its_train_split_only(exported, recipe):
    from pipeline.training import clip_source

    out, splits = exported
    assert set(splits.values()) == {"train", "validation"}, splits  # the seed gives both splits
    for split in ("train", "validation"):
        source = clip_source(str(out), recipe, split)
        assert {v["id"] for v in source.videos} == {v for v, s in splits.items() if s == split}
    assert len(clip_source(str(out), recipe, "all").videos) == len(splits)
    with pytest.raises(InputError, match="no exported shot in split 'test'"):
        clip_source(str(out), recipe, "test")
    for split in ("train", "validation"):  # the export's shard sets, one per split
        shards = clip_source(str(out / "webdataset"), recipe, split)
        manifest = json.loads((out / "webdataset" / split / "shards.json").read_text())
        assert len(shards.videos) == manifest["n_samples"] > 0
        assert {v["id"].split("_shot")[0] for v in shards.videos} == {v for v, s in splits.items() if s == split}


def test_training_closes_the_loop_from_an_export(exported, tmp_path):
    """archive → export → geo4d train: two VAE-decoder steps on the exported train split."""
    from pipeline.training import train

    out, _ = exported
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"network: {Path('configs/train/tiny-network.yaml').resolve()}\nclip_frames: 8\n"
                      "validation: {every: 0, clips: 1}\n"
                      "phases:\n  - {name: vae, train: pointmap_vae, steps: 2, sizes: [[32, 48]]}\n")
    summary = train(str(recipe), [str(out)], str(tmp_path / "run"), validate_pipeline=False)
    assert summary["step"] == 2 and Path(summary["model_ckpt"]).is_file()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"] == f"{out} (train)"  # the run records what it trained on
