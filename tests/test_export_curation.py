"""`geo4d export` curation (issue 15): shots as export units, --where filters, splits by video,
--max-shots, --dry-run, the webdataset shards and the dataset card."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import write_synthetic_videos
from test_shots import write_cut_video

from geo4d.curation import assign_split, load_where, parse_splits, parse_where
from geo4d.errors import InputError
from geo4d_cli import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """v0: two shots joined by a cut; v1: one clean shot; v2: corrupted windows; v3: decoded only."""
    from pipeline import stages
    from storage.store import Store

    d = tmp_path_factory.mktemp("cur")
    s = Store(d / "s.zarr")
    paths = [write_cut_video(d, [1, 2], 24)] + write_synthetic_videos(d, [60, 61, 62], n_frames=24)
    noise = [{}, {}, {"corrupt_windows": 2, "corrupt_deg": 25.0, "ramp_corruption": True}, None]
    for i, (path, n) in enumerate(zip(paths, noise)):
        vid = stages.decode_stage(s, str(path), video_id=f"v{i}").video_id
        stages.shots_stage(s, vid)
        if n is not None:
            stages.windows_stage(s, vid, {"kind": "synthetic", "noise": n})
            stages.fuse_stage(s, vid)
            stages.evaluate_stage(s, vid)
    return s


def test_filter_expressions_are_checked_and_explained():
    f = parse_where("window_agreement < 0.05 and (rotation_deg > 5 or not data_checks)")
    assert f.passes({"window_agreement": 0.01, "rotation_deg": 6.0, "data_checks": True})
    assert not f.passes({"window_agreement": 0.01, "rotation_deg": 1.0, "data_checks": True})
    assert f.failing({"window_agreement": 0.2, "rotation_deg": 9.0}) == "window_agreement < 0.05 (window_agreement = 0.2)"
    assert not f.passes({"window_agreement": None, "rotation_deg": 9.0})  # an unknown score fails a given filter
    assert load_where(None)[0].passes({})  # … but passes the (lenient) default filter
    for bad in ("__import__('os').system('true')", "window_agreement.real < 1", "open < 1", "rotation_deg < 'a'"):
        with pytest.raises(InputError, match="--where"):
            parse_where(bad)


def test_yaml_filter_files(tmp_path):
    f = tmp_path / "f.yaml"
    f.write_text("all:\n  - window_agreement < 0.05\n  - rotation_deg > 5\n")
    flt, source = load_where(str(f))
    assert source == str(f) and flt.passes({"window_agreement": 0.0, "rotation_deg": 6})
    assert not flt.passes({"window_agreement": 0.0, "rotation_deg": 4})
    f.write_text("nope: 1\n")
    with pytest.raises(InputError, match="expected 'where"):
        load_where(str(f))


def test_splits_are_by_video_deterministic_and_follow_the_fractions():
    fr = parse_splits("train=0.6,validation=0.2,test=0.2")
    ids = [f"video-{i}" for i in range(2000)]
    got = [assign_split(v, fr, seed=4) for v in ids]
    assert got == [assign_split(v, fr, seed=4) for v in ids]
    share = {k: got.count(k) / len(ids) for k in fr}
    assert all(abs(share[k] - fr[k]) < 0.04 for k in fr)
    assert got != [assign_split(v, fr, seed=5) for v in ids]
    with pytest.raises(InputError, match="add up"):
        parse_splits("train=0.5,test=0.1")


def _rows(out):
    return {(r["video_id"], r["shot"]): r for r in pq.read_table(out / "index.parquet").to_pylist()}


def test_export_units_are_shots_with_scores_and_splits(store, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["export", store.location, str(out), "--where", "none"]) == 0
    rows = _rows(out)
    assert sorted(rows) == [("v0", 0), ("v0", 1), ("v1", 0), ("v2", 0)]
    assert rows[("v0", 1)]["zarr_path"] == "videos/v0-shot1.zarr" and rows[("v1", 0)]["zarr_path"] == "videos/v1.zarr"
    assert rows[("v0", 1)]["n_frames"] == 24 and rows[("v0", 1)]["shot_start"] == 24
    assert rows[("v0", 0)]["split"] == rows[("v0", 1)]["split"]
    import zarr

    g = zarr.open_group(str(out / "videos/v0-shot1.zarr"), mode="r")
    assert g["depth"].shape[0] == 24 and np.allclose(g["world_from_cam"][0], np.eye(4), atol=1e-6)
    assert rows[("v0", 1)]["abs_rel"] < 0.01 and rows[("v1", 0)]["window_agreement"] < 0.01
    card = json.loads((out / "dataset.json").read_text())
    assert card["counts"]["shots"] == 4 and card["predictor"]["synthetic"] is True
    assert (out / "DATASET.md").is_file()


def test_default_filter_drops_the_corrupted_reconstruction(store, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["export", store.location, str(out)]) == 0
    rows = _rows(out)
    assert rows[("v2", 0)]["zarr_path"] is None and rows[("v2", 0)]["skipped"].startswith("filter: ")
    assert all(rows[k]["skipped"] is None for k in [("v0", 0), ("v0", 1), ("v1", 0)])
    card = json.loads((out / "dataset.json").read_text())
    assert sum(card["shots_dropped"].values()) == 1 and card["shots_kept"] == 3


def test_where_max_shots_and_dry_run_write_nothing(store, tmp_path, capsys):
    out = tmp_path / "dry"
    assert main(["export", store.location, str(out), "--where", "rotation_deg > 30", "--max-shots", "1",
                 "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    assert "would export v0 shot 0" in text and "would skip v3: fuse stage not complete" in text
    assert "dropped" in text and "filter: rotation_deg > 30" in text
    assert text.count("would export ") <= 1 and ("max_shots" in text or text.count("would export ") == 1)


def _stale_shard_sets(wds_dir):
    """An earlier export's shard sets: the former flat layout, and a split this export leaves empty."""
    (wds_dir / "train").mkdir(parents=True)
    for d in (wds_dir, wds_dir / "train"):
        (d / "shards.json").write_text('{"shards": [{"name": "shard-000000.tar"}]}')
        (d / "shard-000000.tar").write_bytes(b"stale")


def test_webdataset_shards_per_split(store, tmp_path, capsys):
    """One shard set per split (webdataset/<split>/ + its shards.json), each sample in its video's split,
    shuffled within the split by the seed; empty splits (and an earlier export's sets) have no folder;
    the card counts each split and its snippet reads the real shards."""
    from storage.shards import read_shard_samples, read_shards_manifest

    out = tmp_path / "wds"
    _stale_shard_sets(out / "webdataset")
    argv = ["export", store.location, str(out), "--format", "webdataset", "--videos", "v0", "v1", "v2",
            "--clip-frames", "8", "--shard-mib", "0.5"]
    assert main(argv) == 0
    fractions = parse_splits(None)
    shots = {"v0": 2, "v1": 1}  # kept shots (v2 is dropped by the default filter), each 3 clips of 8 frames
    per_split: dict[str, int] = {}
    split_shots: dict[str, int] = {}
    for vid, n in shots.items():
        split = assign_split(vid, fractions, 0)
        per_split[split] = per_split.get(split, 0) + 3 * n
        split_shots[split] = split_shots.get(split, 0) + n
    root = out / "webdataset"
    assert sorted(p.name for p in root.iterdir()) == sorted(per_split)  # no flat set, no empty split
    card = json.loads((out / "dataset.json").read_text())
    keys = {}
    for split, n in per_split.items():
        samples = list(read_shard_samples(str(root / split)))
        man = read_shards_manifest(root / split)
        assert len(samples) == n == man["n_samples"] and man["split"] == split
        assert all(assign_split(x["scores"]["video_id"], fractions, 0) == split == x["scores"]["scores"]["split"]
                   for x in samples)
        assert samples[0]["depth"].shape[0] == 8 and np.allclose(samples[0]["world_from_cam"][0], np.eye(4), atol=1e-6)
        assert card["webdataset"]["splits"][split] == {"shards": man["n_shards"], "samples": n,
                                                       "shots": split_shots[split], "path": f"webdataset/{split}"}
        keys[split] = [x["__key__"] for x in samples]
    assert card["counts"]["samples"] == 9 and card["webdataset"]["shards"] == sum(
        s["shards"] for s in card["webdataset"]["splits"].values())
    big = max(per_split, key=per_split.get)
    snippet = (out / "DATASET.md").read_text().split("```python")[-1].split("```")[0]
    scope: dict = {}
    exec(compile(snippet, "DATASET.md", "exec"), scope)  # noqa: S102 — the card's own example, on real shards
    assert scope["frames"].shape[0] == 8 and scope["split"] in per_split
    assert main(argv + ["--shard-seed", "5"]) == 0
    assert [x["__key__"] for x in read_shard_samples(str(root / big))] != keys[big]  # the seed sets the order
    assert main(argv) == 0
    assert [x["__key__"] for x in read_shard_samples(str(root / big))] == keys[big]  # … deterministically


def test_dry_run_lists_what_each_format_would_get(store, tmp_path, capsys):
    out = tmp_path / "dry"
    assert main(["export", store.location, str(out), "--format", "zarr,tum,webdataset", "--clip-frames", "8",
                 "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    v0 = assign_split("v0", parse_splits(None), 0)
    assert (f"would export v0 shot 1 (frames 24–47) [{v0}] → zarr videos/v0-shot1.zarr, tum tum/v0-shot1/, "
            f"webdataset webdataset/{v0}/ (3 sample(s))") in text
    assert "would drop v2 shot 0 (frames 0–23): filter: " in text and "tum/v2/" not in text
    assert "  zarr: 3 shot(s) → videos/" in text and "  tum: 3 shot(s) → tum/" in text
    assert "  webdataset: 9 sample(s) of 3 shot(s): " in text and f"webdataset/{v0}/" in text


def test_every_format_gets_the_curations_shots(store, tmp_path, capsys):
    """--format zarr,tum: the standard format holds exactly the shots of the index (the default
    filter drops the corrupted v2 from both; --max-shots too), and an earlier export of a shot now
    dropped is removed."""
    out = tmp_path / "both"

    def units():
        kept = [r for r in _rows(out).values() if r["zarr_path"]]
        names = sorted(r["zarr_path"].removeprefix("videos/").removesuffix(".zarr") for r in kept)
        return names, sorted(p.name for p in (out / "tum").iterdir())

    assert main(["export", store.location, str(out), "--format", "zarr,tum", "--where", "none"]) == 0
    assert units()[0] == units()[1] == ["v0-shot0", "v0-shot1", "v1", "v2"]
    capsys.readouterr()
    assert main(["export", store.location, str(out), "--format", "zarr,tum"]) == 0
    printed = capsys.readouterr().out
    assert units()[0] == units()[1] == ["v0-shot0", "v0-shot1", "v1"]
    assert "drop v2: filter: worst_window_agreement < 0.05" in printed and "removed the earlier tum export of v2" in printed
    assert "tum: 3 export unit(s) (video or shot)" in printed and "1 shot(s) left out by the curation" in printed
    assert main(["export", store.location, str(out), "--format", "zarr,tum", "--max-shots", "2"]) == 0
    assert units()[0] == units()[1] == ["v0-shot0", "v0-shot1"]
    assert "drop v1: max_shots: past --max-shots 2" in capsys.readouterr().out


def test_split_names_must_be_folder_names(store, tmp_path, capsys):
    assert main(["export", store.location, str(tmp_path / "o"), "--split", "train=0.5,../up=0.5"]) == 2
    assert "split name '../up' must be a plain folder name" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_standard_formats_are_written_per_shot(store, tmp_path, capsys):
    """A two-shot video's standard formats: one directory per shot, each in its own world frame (its
    first pose the identity), never one file mixing the shots; a one-shot video keeps <video_id>/."""
    out = tmp_path / "fmt"
    assert main(["export", store.location, str(out), "--format", "tum,ply,depth", "--depth-format", "npz",
                 "--videos", "v0", "v1"]) == 0
    printed = capsys.readouterr().out
    fused = store.read_fused("v0")
    for fmt in ("tum", "ply", "depth"):
        assert sorted(p.name for p in (out / fmt).iterdir()) == ["v0-shot0", "v0-shot1", "v1"]
        assert f"exported v0-shot1 {fmt}: " in printed
    for k, (a, b) in enumerate([(0, 24), (24, 48)]):
        side = json.loads((out / "depth" / f"v0-shot{k}" / "export.json").read_text())
        assert (side["shot"], side["shot_start"], side["shot_end"], side["n_frames"]) == (k, a, b, 24)
        npz = np.load(out / "depth" / f"v0-shot{k}" / "depth.npz")
        assert npz["depth"].shape[0] == 24
        assert np.allclose(npz["world_from_cam"], fused.world_from_cam[a:b]) and np.allclose(npz["world_from_cam"][0], np.eye(4))
        assert np.array_equal(npz["depth"], np.where(fused.valid[a:b], fused.depth[a:b], 0))
        poses = [ln for ln in (out / "tum" / f"v0-shot{k}" / "trajectory.tum").read_text().splitlines()
                 if ln and not ln.startswith("#")]
        assert len(poses) == 24 and np.allclose([float(x) for x in poses[0].split()[1:]], [0, 0, 0, 0, 0, 0, 1], atol=1e-6)
        assert f"shot {k} (frames {a}-{b - 1})" in (out / "ply" / f"v0-shot{k}" / "points.ply").read_text(errors="ignore")[:2000]
    assert json.loads((out / "tum" / "v1" / "export.json").read_text()).get("shot") is None
    assert main(["export", store.location, str(out), "--format", "tum", "--videos", "v0"]) == 0
    assert "keep v0-shot0 tum: already exported" in capsys.readouterr().out
