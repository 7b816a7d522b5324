"""Resident networks: one load per (spec, device) per process, shared by every video; GPUs handed out
one sampling call at a time."""

from __future__ import annotations

import threading
import time

import pytest

import pipeline.resident as resident
from pipeline.predictors import parse_predictor_spec


class FakeNetwork:
    """Stands in for the loaded network: counts how often it is built."""

    built = 0

    def __init__(self, spec):
        FakeNetwork.built += 1
        self.spec = spec
        time.sleep(0.2)  # a slow load makes concurrent first calls overlap


@pytest.fixture
def spec(tmp_path, monkeypatch):
    for name in ("c.yaml", "m.ckpt", "v.ckpt"):
        (tmp_path / name).write_bytes(name.encode() * 100)
    monkeypatch.setattr(resident, "predictor_from_spec", FakeNetwork)
    FakeNetwork.built = 0
    resident.forget_resident()
    yield parse_predictor_spec({"kind": "geo4d", "config": str(tmp_path / "c.yaml"),
                                "checkpoint": str(tmp_path / "m.ckpt"), "pointmap_vae": str(tmp_path / "v.ckpt")})
    resident.forget_resident()


def test_one_load_per_spec_and_device(spec):
    before = resident.network_loads()
    a, load = resident.resident_predictor(spec, "cpu")
    assert load is not None and load.ordinal == before + 1 and "network loaded in" in load.message
    assert a.spec.device == "cpu"
    b, again = resident.resident_predictor(spec.model_copy(update={"fs": 7}), "cpu")  # fs is per video
    assert b is a and again is None
    c, other = resident.resident_predictor(spec, "cuda:1")  # another device holds its own model
    assert c is not a and other is not None and c.spec.device == "cuda:1"
    assert resident.resident_predictor(spec, "cpu")[0] is a
    assert FakeNetwork.built == 2 and resident.network_loads() == before + 2


def test_another_spec_replaces_the_model_on_that_device(spec, tmp_path):
    a, _ = resident.resident_predictor(spec, "cpu")
    b, load = resident.resident_predictor(spec.model_copy(update={"dtype": "bfloat16"}), "cpu")
    assert b is not a and load is not None
    # a replaced checkpoint file (same path) is loaded again
    (tmp_path / "m.ckpt").write_bytes(b"other weights" * 50)
    c, load = resident.resident_predictor(spec.model_copy(update={"dtype": "bfloat16"}), "cpu")
    assert c is not b and load is not None


def test_concurrent_first_calls_load_once(spec):
    got = []
    threads = [threading.Thread(target=lambda: got.append(resident.resident_predictor(spec, "cpu")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert FakeNetwork.built == 1
    assert len({id(p) for p, _ in got}) == 1 and sum(load is not None for _, load in got) == 1


def test_device_slots_give_each_call_its_own_gpu(spec, monkeypatch):
    monkeypatch.setattr(resident, "_gpu_count", lambda: 2)
    monkeypatch.setattr(resident, "_free_gpus", None)
    held, order = [], []
    with resident.device_slot(spec) as d0, resident.device_slot(spec) as d1:
        assert {d0, d1} == {"cuda:0", "cuda:1"}

        def third():
            with resident.device_slot(spec) as d:
                order.append(("third got", d))

        t = threading.Thread(target=third)
        t.start()
        time.sleep(0.2)
        held.append(list(order))  # the third call waits while both GPUs are in use
    t.join(timeout=5)
    assert held == [[]] and order and order[0][1] in ("cuda:0", "cuda:1")
    with resident.device_slot(spec.model_copy(update={"device": "cuda:5"})) as d:
        assert d == "cuda:5"  # a spec naming its device gets it


def test_without_gpus_the_slot_is_the_cpu(spec, monkeypatch):
    monkeypatch.setattr(resident, "_gpu_count", lambda: 0)
    with resident.device_slot(spec) as a, resident.device_slot(spec) as b:
        assert a == b == "cpu"
