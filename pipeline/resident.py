"""Resident networks: the Geo4D network loaded once per (spec, device) in a process, and the devices
a process's sampling may use.

Loading the official checkpoints (~10 GB) takes tens of seconds; sampling a short video a few. So
a worker process keeps the predictor it loaded and every later video and flow run on that worker
reuses it (:func:`resident_predictor`). Each device holds at most one model: a different spec on
the same device replaces the model there. A process with several GPUs hands them out one sampling
call at a time (:func:`device_slot`), so two videos never share a GPU and each GPU keeps its own
model.

Example:
    >>> from pipeline.predictors import parse_predictor_spec
    >>> spec = parse_predictor_spec({"kind": "geo4d", "config": "c.yaml", "checkpoint": "m.ckpt",
    ...                              "pointmap_vae": "v.ckpt"})
    >>> with device_slot(spec) as device:                                    # doctest: +SKIP
    ...     predictor, load = resident_predictor(spec, device)               # loads on first use only
    >>> load.message if load else "already resident"                         # doctest: +SKIP
    'network loaded in 41.2 s (1st on this worker)'
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from geo4d.predictor import WindowPredictor
from pipeline.predictors import Geo4DPredictorSpec, predictor_from_spec, resolved_device

__all__ = ["NetworkLoad", "resident_predictor", "network_loads", "device_slot", "forget_resident"]

log = logging.getLogger("geo4d.resident")

_lock = threading.Lock()
_device_locks: dict[str, threading.Lock] = {}
_resident: dict[str, tuple[str, WindowPredictor]] = {}  # device → (spec key, predictor)
_loads = 0
_free_gpus: list[int] | None = None
_gpus_changed = threading.Condition()


@dataclass(frozen=True)
class NetworkLoad:
    """One load of the network in this process: how long it took and the how-many-th it was."""

    seconds: float
    ordinal: int
    device: str

    @property
    def message(self) -> str:
        nth = {1: "1st", 2: "2nd", 3: "3rd"}.get(self.ordinal, f"{self.ordinal}th")
        return f"network loaded in {self.seconds:.1f} s ({nth} on this worker, {self.device})"


def _spec_key(spec: Geo4DPredictorSpec) -> str:
    """What the loaded model depends on: the spec without ``fs`` (given per video) and ``device``
    (the cache is per device), plus the files' fingerprints (a replaced checkpoint is reloaded)."""
    from geo4d_model.loader import file_fingerprint

    data = spec.fingerprint_dict()
    data.pop("fs", None)
    data.pop("device", None)
    data["files"] = [file_fingerprint(p) for p in (spec.checkpoint, spec.pointmap_vae, spec.context) if p]
    return json.dumps(data, sort_keys=True)


def resident_predictor(spec: Geo4DPredictorSpec, device: str) -> tuple[WindowPredictor, NetworkLoad | None]:
    """The predictor of ``spec`` on ``device``, loaded now only if this process does not hold it.

    Returns the predictor and the :class:`NetworkLoad` when this call loaded it (None when it was
    resident). Concurrent callers for the same device wait for one load instead of loading twice.
    """
    global _loads
    key = _spec_key(spec)
    with _lock:
        device_lock = _device_locks.setdefault(device, threading.Lock())
    with device_lock:
        held = _resident.get(device)
        if held is not None and held[0] == key:
            return held[1], None
        _resident.pop(device, None)  # one model per device: drop the other spec's before loading
        t0 = time.perf_counter()
        predictor = predictor_from_spec(spec.model_copy(update={"device": device}))
        with _lock:
            _loads += 1
            load = NetworkLoad(time.perf_counter() - t0, _loads, device)
            _resident[device] = (key, predictor)
    log.info(load.message)
    return predictor, load


def network_loads() -> int:
    """How many times this process has loaded the network."""
    return _loads


def forget_resident() -> None:
    """Drop every resident model (tests; freeing memory in a notebook)."""
    with _lock:
        _resident.clear()


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is needed for the network anyway
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextmanager
def device_slot(spec: Geo4DPredictorSpec) -> Iterator[str]:
    """The device one sampling call runs on, held for the call.

    A spec naming a device gets it; otherwise, with GPUs visible (``CUDA_VISIBLE_DEVICES``), the
    call waits for a GPU no other call of this process is using (``cuda:i``); without GPUs, ``cpu``.
    """
    global _free_gpus
    if spec.device or _gpu_count() == 0:
        yield resolved_device(spec)
        return
    with _gpus_changed:
        if _free_gpus is None:
            _free_gpus = list(range(_gpu_count()))
        while not _free_gpus:
            _gpus_changed.wait()
        gpu = _free_gpus.pop(0)
    try:
        yield f"cuda:{gpu}"
    finally:
        with _gpus_changed:
            _free_gpus.append(gpu)
            _free_gpus.sort()
            _gpus_changed.notify()
