"""Training shards (storage/shards.py): size, readability with webdataset and tarfile, order, round trip."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from geo4d.errors import InputError
from storage.shards import (SHARDS_MANIFEST, SampleRef, ShardSample, read_shard_samples, read_shards_manifest,
                            shot_samples, slice_sample, write_shards)

H, W, SHOT_FRAMES = 12, 16, 40


def _shot_arrays(video: int, shot: int) -> dict[str, np.ndarray]:
    """Deterministic random arrays of one shot (its own world frame: pose 0 = I, then a drift)."""
    rng = np.random.default_rng(1000 * video + shot)
    poses = np.repeat(np.eye(4)[None], SHOT_FRAMES, axis=0)
    poses[:, :3, 3] = np.cumsum(rng.normal(size=(SHOT_FRAMES, 3)), axis=0) * 0.1
    poses[0] = np.eye(4)
    K = np.array([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]])
    return {"frames": rng.integers(0, 256, (SHOT_FRAMES, H, W, 3), dtype=np.uint8),
            "depth": rng.uniform(1, 10, (SHOT_FRAMES, H, W)).astype(np.float32),
            "confidence": rng.uniform(0, 1, (SHOT_FRAMES, H, W)).astype(np.float32),
            "intrinsics": np.repeat(K[None], SHOT_FRAMES, axis=0), "world_from_cam": poses}


def _refs(n_videos: int = 3, n_shots: int = 2, **kw) -> list[SampleRef]:
    return [r for v in range(n_videos) for s in range(n_shots)
            for r in shot_samples(f"video.{v}", s, SHOT_FRAMES, shot_start=SHOT_FRAMES * s, **kw)]


def _load(ref: SampleRef) -> ShardSample:
    v = int(ref.video_id.split(".")[1])
    return slice_sample(ref, _shot_arrays(v, ref.shot), {"window_agreement": 0.01 * v}, {"store": "test"})


def _sample_bytes() -> int:
    s = _load(_refs()[0])
    return sum(getattr(s, n).nbytes + 128 for n in ("frames", "depth", "confidence", "intrinsics", "world_from_cam"))


def test_shards_are_close_to_the_target_size(tmp_path):
    refs = _refs(stride=8)  # 4 clips per shot, 24 samples
    one = _sample_bytes()
    target = 3 * one + one // 2
    infos = write_shards(refs, tmp_path, load=_load, target_bytes=target)
    assert sum(i.n_samples for i in infos) == len(refs)
    assert len(infos) == -(-len(refs) // 4)  # 4 samples reach 3.5 samples' worth, then a new shard opens
    overhead = 6 * 1024 + 10240  # tar headers and padding per sample, the end-of-archive record
    for info in infos[:-1]:
        assert target <= info.n_bytes <= target + one + 4 * overhead
    assert infos[-1].n_bytes <= target + one + 4 * overhead
    manifest = read_shards_manifest(tmp_path)
    assert manifest["n_samples"] == len(refs) and manifest["n_shards"] == len(infos)
    assert [s["n_bytes"] for s in manifest["shards"]] == [p.stat().st_size for p in sorted(tmp_path.glob("shard-*.tar"))]


def test_every_sample_is_readable_with_webdataset_and_tarfile(tmp_path):
    import webdataset as wds

    refs = _refs()
    infos = write_shards(refs, tmp_path, load=_load, target_bytes=200_000)
    keys = {r.key for r in refs}
    plain = list(wds.WebDataset([str(i.path) for i in infos], shardshuffle=False).decode())
    assert {s["__key__"] for s in plain} == keys
    assert all(set(s) >= {"frames.npy", "depth.npy", "confidence.npy", "intrinsics.npy", "world_from_cam.npy",
                          "scores.json"} for s in plain)
    members = {}
    for info in infos:
        with tarfile.open(info.path) as tar:
            for m in tar.getmembers():
                members[m.name] = tar.extractfile(m).read()
    assert len(members) == 6 * len(refs)
    some = sorted(keys)[0]
    frames = np.load(io.BytesIO(members[f"{some}.frames.npy"]), allow_pickle=False)
    assert frames.dtype == np.uint8 and frames.shape == (16, H, W, 3)
    assert json.loads(members[f"{some}.scores.json"])["video_id"].startswith("video.")


def test_round_trip_is_exact_and_poses_are_relative_to_the_first_frame(tmp_path):
    refs = _refs(unit="clip", stride=12)
    write_shards(refs, tmp_path, load=_load, target_bytes=1 << 30)
    got = {s["__key__"]: s for s in read_shard_samples(tmp_path)}
    assert len(got) == len(refs)
    for ref in refs:
        want, s = _load(ref), got[ref.key]
        for name in ("frames", "depth", "confidence", "intrinsics", "world_from_cam"):
            assert s[name].dtype == getattr(want, name).dtype
            np.testing.assert_array_equal(s[name], getattr(want, name))
        np.testing.assert_array_equal(s["world_from_cam"][0], np.eye(4, dtype=np.float32))
        shot_pose = _shot_arrays(int(ref.video_id[-1]), ref.shot)["world_from_cam"][ref.start]
        np.testing.assert_allclose(s["scores"]["shot_world_from_cam0"], shot_pose)
        assert s["scores"]["start"] == ref.shot_start + ref.start and s["scores"]["video_id"] == ref.video_id
        assert s["scores"]["scores"] == {"window_agreement": 0.01 * int(ref.video_id[-1])}


def test_order_is_deterministic_by_seed_and_mixes_shots(tmp_path):
    refs = _refs(n_videos=4, stride=8)
    orders = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_shards(refs, tmp_path / name, load=_load, target_bytes=300_000, seed=seed)
        orders[name] = [k for s in read_shards_manifest(tmp_path / name)["shards"] for k in s["keys"]]
    assert orders["a"] == orders["b"] != orders["c"]
    assert sorted(orders["a"]) == sorted(r.key for r in refs)
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() == (tmp_path / "b" / "shard-000000.tar").read_bytes()
    first_shard = read_shards_manifest(tmp_path / "a")["shards"][0]["keys"]
    assert len({k.rsplit("_", 1)[0] for k in first_shard}) > 1  # several shots in one shard


def test_in_memory_samples_are_shuffled_through_the_buffer(tmp_path):
    samples = [_load(r) for r in _refs(n_videos=2)]
    infos = write_shards(iter(samples), tmp_path, target_bytes=1 << 30, shuffle_buffer=3, seed=1)
    keys = list(infos[0].keys)
    assert sorted(keys) == sorted(s.ref.key for s in samples) and keys != [s.ref.key for s in samples]


def test_whole_shot_samples(tmp_path):
    refs = _refs(unit="shot")
    assert [r.length for r in refs] == [SHOT_FRAMES] * 6
    write_shards(refs, tmp_path, load=_load)
    shapes = {s["frames"].shape for s in read_shard_samples(str(tmp_path / "shard-*.tar"))}
    assert shapes == {(SHOT_FRAMES, H, W, 3)}


def test_rewrite_replaces_older_shards_and_failures_leave_them(tmp_path):
    refs = _refs(stride=8)
    many = write_shards(refs, tmp_path, load=_load, target_bytes=100_000)
    few = write_shards(refs[:4], tmp_path, load=_load, target_bytes=1 << 30)
    assert len(many) > 1 and len(few) == 1
    assert sorted(p.name for p in tmp_path.glob("shard-*.tar")) == ["shard-000000.tar"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(ref):
        if ref.key == refs[2].key:
            raise RuntimeError("unreadable shot")
        return _load(ref)

    with pytest.raises(RuntimeError):
        write_shards(refs, tmp_path, load=broken, target_bytes=100_000)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left either


def test_bad_input_is_one_clear_line(tmp_path):
    ref = SampleRef("v", 0, 0, 16)
    arrays = _shot_arrays(0, 0)
    with pytest.raises(InputError, match=r"depth: expected shape \(16, 12, 16\)"):
        ShardSample(ref, arrays["frames"][:16], arrays["depth"][:15], arrays["confidence"][:16],
                    arrays["intrinsics"][:16], arrays["world_from_cam"][:16])
    with pytest.raises(InputError, match="outside the shot"):
        slice_sample(SampleRef("v", 0, 30, 16), arrays)
    with pytest.raises(InputError, match="prefix"):
        write_shards([], tmp_path, prefix="a.b")
    with pytest.raises(InputError, match="duplicate sample keys"):
        write_shards([SampleRef("video.0", 0, 0, 16)] * 2, tmp_path / "dup", load=_load)
    assert not list((tmp_path / "dup").glob("*.tar*"))
    assert write_shards([], tmp_path / "empty") == [] and (tmp_path / "empty" / SHARDS_MANIFEST).is_file()
