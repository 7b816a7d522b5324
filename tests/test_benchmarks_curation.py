"""benchmarks/curation.py: its own metrics, and its --quick run end to end (about 20–25 s, marked slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_curation", ROOT / "benchmarks" / "curation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_boundary_matching_is_one_to_one_within_the_tolerance(bench):
    assert bench.match_boundaries([10, 21, 40], [11, 20, 30]) == (2, 1, 1)
    assert bench.match_boundaries([10, 11], [10]) == (1, 1, 0)  # two detections of one cut: one is false
    assert bench.match_boundaries([12], [10]) == (0, 1, 1)
    assert bench.match_boundaries([], [5]) == (0, 0, 1)


def test_roc_auc_is_the_rank_statistic(bench):
    assert bench.roc_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert bench.roc_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert bench.roc_auc([3.0, 4.0], [1.0, 3.0]) == 0.875  # one tie counts half
    assert bench.roc_auc([None, 1.0], [2.0]) == 0.0 and bench.roc_auc([None], [1.0]) is None


@pytest.mark.slow  # about 20–25 s alone on 2 cores: near the 30 s line, longer on a busy machine
def test_quick_run_finds_the_shots_and_separates_the_corrupted_windows(bench, tmp_path):
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "curation.json").read_text())
    assert res["boundaries"]["precision"] == 1.0 and res["boundaries"]["recall"] == 1.0
    assert all(bench._excess(r) <= 0 for r in res["per_shot"])
    auc = res["scores"]["auc"]
    assert auc["worst_window_agreement"]["corrupted"] == 1.0 and auc["rotation_deg"]["static"] == 0.0
    f = res["filter"]
    assert f["counts"]["corrupted"] >= 3 and f["drop_corrupted"] >= 0.9 and f["keep_clean"] >= 0.95
    assert res["multi_corrupted"]["mcorrupt0"]  # the multi-shot video got its corrupted window
    assert res["timing"]["added_fraction"] < 0.5
    md = (tmp_path / "curation.md").read_text()
    assert "SYNTHETIC" in md and "| `worst_window_agreement` |" in md and "## Targets" in md
    assert "| corrupted shots dropped |" in md
