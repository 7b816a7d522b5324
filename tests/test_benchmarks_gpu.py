"""benchmarks/gpu.py runs: its smoke mode's functions on CPU with the tiny fixture config (a few seconds)."""

from __future__ import annotations

import doctest
import importlib.util
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_bench(reference_dir):
    if not (reference_dir / "fixtures" / "tiny" / "config.yaml").is_file():
        pytest.skip("tiny fixture absent")
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_counter_counts_the_tiny_model(gpu_bench):
    f = gpu_bench.count_flops(gpu_bench.TINY_CONFIG, (16, 16), stride=4)
    assert f["encode_per_frame"] > 0 and f["unet_per_call"] > 0 and f["decode_per_window"] > 0
    assert f["unet_per_window"] == 5 * f["unet_per_call"]
    # official: every window encodes its V frames; ours: `stride` new frames per window (tiny: V = 4 = stride)
    assert f["official_per_window"] - f["ours_per_window"] == (f["window"] - 4) * f["encode_per_frame"]
    assert abs(sum(f["ours_split"].values()) - 1.0) < 1e-9


def test_smoke_report_has_every_variant(gpu_bench):
    args = gpu_bench.parse_args(["--smoke"])
    args.windows = 1
    torch.set_grad_enabled(False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rec = gpu_bench.measure(args, torch.device("cpu"), gpu_bench.TINY_CONFIG, time.perf_counter() + 120)
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(True)
    names = [v["name"] for v in rec["variants"]]
    assert names == [v[0] for v in gpu_bench.VARIANTS] and len(names) == 9
    assert sorted(gpu_bench.RUN_ORDER) == sorted(names)
    for v in rec["variants"]:
        if v["name"].endswith("_compile"):
            assert "skipped" in v, v  # the smoke mode does not compile
        else:
            assert v["seconds"] > 0 and v["windows_per_s"] > 0 and v["achieved_tflops"] > 0, v
    assert rec["targets"]["best_ours"].startswith("ours_wb")
    assert "speedup" in rec["targets"] and "flop_floor_share" not in rec["targets"]  # no peak known for a CPU
    md = gpu_bench.markdown(rec)
    assert all(n in md for n in names) and "FLOP floor" in md


def test_budget_skips_remaining_variants(gpu_bench):
    out = gpu_bench.run_variants(None, None, None, {"compile_reserve_s": 1.0}, {}, deadline=time.perf_counter() - 1)
    assert [v["name"] for v in out] == [v[0] for v in gpu_bench.VARIANTS]
    assert all(v["skipped"] == "budget spent" for v in out)


def test_peak_table_and_doctests(gpu_bench):
    assert gpu_bench.peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "table: H100")
    assert gpu_bench.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert gpu_bench.peak_tflops("weird")[0] is None
    assert doctest.testmod(gpu_bench).failed == 0
