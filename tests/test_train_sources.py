"""``--data`` locations of ``geo4d train`` → clip sources (pipeline/training.py): exported datasets,
webdataset shards (random access by tar offsets) and the synthetic scenes."""

from __future__ import annotations

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
