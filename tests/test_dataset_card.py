"""The dataset card (storage/dataset_card.py): files, JSON round trip, what the markdown names, the figure."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from geo4d.errors import InputError
from storage.dataset_card import (CARD_FIGURE, DatasetInfo, code_version, read_dataset_card, score_distribution,
                                  score_distributions, write_dataset_card)

SCORES = ("window_agreement", "rotation_deg", "data_checks")
DROPPED = {"skipped: shorter than one window (9 frames < 16)": 2, "filter: window_agreement < 0.05": 3,
           "max_shots": 1}


def _info(**kw) -> dict:
    rng = np.random.default_rng(0)
    shots = [{"window_agreement": float(rng.uniform(0, 0.05)), "rotation_deg": float(rng.uniform(0, 40)),
              "data_checks": bool(i % 5)} for i in range(30)]
    return {"name": "test set", "counts": {"videos": 4, "shots": 30, "frames": 1200, "samples": 75},
            "sources": [{"location": "/data/store", "videos": 5, "shots": 36, "frames": 1500}],
            "shots_kept": 30, "shots_dropped": DROPPED,
            "splits": {"train": {"videos": 3, "shots": 24, "frames": 960}, "val": {"videos": 1, "shots": 6}},
            "filters": {"where": "window_agreement < 0.05", "split_fractions": {"train": 0.8, "val": 0.2},
                        "split_seed": 7, "max_shots": 30},
            "scores": {k: v.model_dump() for k, v in score_distributions(shots, SCORES).items()},
            "predictor": {"name": "synthetic (test instrument)", "synthetic": True, "checkpoint_fingerprint": "abc123",
                          "dtype": "float32", "fs": 10, "image_size": [64, 96], "sampler_steps": 5},
            "formats": ["zarr", "webdataset"],
            "webdataset": {"unit": "clip", "clip_frames": 16, "stride": 16, "shards": 3, "target_bytes": 1 << 20,
                           "splits": {"train": {"shards": 2, "samples": 60, "shots": 24, "path": "webdataset/train"},
                                      "val": {"shards": 1, "samples": 15, "shots": 6, "path": "webdataset/val"}}},
            **kw}


def test_card_files_exist_and_the_json_round_trips(tmp_path):
    md, js = write_dataset_card(tmp_path, _info())
    assert md.is_file() and js.is_file() and (tmp_path / CARD_FIGURE).is_file()
    info = DatasetInfo.model_validate(_info())
    back = read_dataset_card(tmp_path)
    assert back.model_dump(exclude={"created_at", "code"}) == info.model_dump(exclude={"created_at", "code"})
    assert DatasetInfo.model_validate_json(js.read_text()) == back
    assert json.loads(js.read_text())["shots_dropped"] == DROPPED
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_markdown_names_every_reason_and_score_and_says_synthetic(tmp_path):
    md, _ = write_dataset_card(tmp_path, _info())
    text = md.read_text()
    for reason in DROPPED:
        assert reason in text
    for score in SCORES:
        assert f"`{score}`" in text
    assert "SYNTHETIC" in text and "window_agreement < 0.05" in text and "abc123" in text
    assert "import webdataset as wds" in text and "da.from_zarr" in text
    assert "| train | 2 | 60 | `webdataset/train/` |" in text and "| val | 1 | 15 | `webdataset/val/` |" in text
    assert "shuffled within each split" in text
    zarr_only = _info(webdataset=None, formats=["zarr"], counts={"videos": 4, "shots": 30, "frames": 1200})
    no_wds = write_dataset_card(tmp_path / "z", zarr_only)[0].read_text()
    assert "webdataset" not in no_wds and "SYNTHETIC" in no_wds


def test_figure_is_a_png(tmp_path):
    write_dataset_card(tmp_path, _info())
    data = (tmp_path / CARD_FIGURE).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    from PIL import Image

    with Image.open(tmp_path / CARD_FIGURE) as im:
        im.verify()


def test_distribution_statistics():
    d = score_distribution([3.0, None, 1.0, 2.0, float("nan"), True])
    assert d.n == 4 and d.min == 1.0 and d.max == 3.0 and d.median == 1.5
    assert sum(d.counts) == 4 and len(d.edges) == len(d.counts) + 1
    assert d.quantiles["q25"] == pytest.approx(1.0) and d.quantiles["q95"] == pytest.approx(2.85)
    assert score_distribution([None]).n == 0


def _sample(vid: str, V: int, score: float):
    from storage.shards import SampleRef, ShardSample

    return ShardSample(SampleRef(vid, 0, 0, V), np.zeros((V, 8, 8, 3), np.uint8), np.ones((V, 8, 8)),
                       np.ones((V, 8, 8)), np.repeat(np.eye(3)[None], V, 0), np.repeat(np.eye(4)[None], V, 0),
                       {"window_agreement": score})


def test_runnable_webdataset_snippet_reads_one_split(tmp_path):
    """The card's snippet, run on real shards laid out per split: it reads the train split's shards
    (its own shards.json), not the other split's."""
    from storage.shards import write_shards

    write_shards([_sample("a", 4, 0.01)], tmp_path / "webdataset" / "train")
    write_shards([_sample("b", 6, 0.02)], tmp_path / "webdataset" / "val")
    md, _ = write_dataset_card(tmp_path, _info())
    snippet = md.read_text().split("```python")[2].split("```")[0]
    assert 'split = "train"' in snippet
    scope: dict = {}
    exec(compile(snippet, "DATASET.md", "exec"), scope)  # noqa: S102 — the card's own example
    assert scope["frames"].shape == (4, 8, 8, 3) and scope["scores"] == {"window_agreement": 0.01}
    scope = {}
    exec(compile(snippet.replace('split = "train"', 'split = "val"'), "DATASET.md", "exec"), scope)  # noqa: S102
    assert scope["frames"].shape == (6, 8, 8, 3) and scope["scores"] == {"window_agreement": 0.02}


def test_a_card_without_train_split_names_the_first_and_old_cards_read(tmp_path):
    info = _info()
    info["webdataset"]["splits"].pop("train")
    text = write_dataset_card(tmp_path, info)[0].read_text()
    assert 'split = "val"' in text and "# one of: val" in text
    old = _info()
    old["webdataset"].pop("splits")  # a card written before shards per split
    assert DatasetInfo.model_validate(old).webdataset.splits == {}


def test_code_version_never_fails_and_bad_info_is_one_line(tmp_path, monkeypatch):
    c = code_version()
    assert c.version and (c.git_commit is None or len(c.git_commit) == 40)
    monkeypatch.setenv("PATH", "")  # no git: still a version, no commit
    assert code_version().git_commit is None
    with pytest.raises(InputError, match="counts"):
        write_dataset_card(tmp_path, {"shots_kept": 1})
    assert not (tmp_path / "dataset.json").exists()
