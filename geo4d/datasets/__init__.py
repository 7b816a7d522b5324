"""Readers for the depth / pose benchmarks in their native layouts (pure; no Prefect).

``load_sequence(dataset, root, name)`` returns a :class:`BenchmarkSequence` (frames and GT depth
read on demand, GT poses/intrinsics where the dataset has them) with the evaluation protocol's
frame subset and input resolution; ``list_sequences(dataset, root, task)`` lists the sequences the
protocol evaluates (``task`` = ``"depth"``, ``"pose"`` or None for either). See docs/evaluation.md.
"""

from __future__ import annotations

import os

from geo4d.datasets.base import BenchmarkSequence
from geo4d.datasets.bonn import bonn_sequences, load_bonn
from geo4d.datasets.kitti import kitti_sequences, load_kitti
from geo4d.datasets.sintel import load_sintel, sintel_sequences
from geo4d.datasets.tum import load_tum, tum_sequences
from geo4d.errors import InputError

__all__ = ["DATASETS", "BenchmarkSequence", "list_sequences", "load_sequence"]

_READERS = {
    "sintel": (sintel_sequences, load_sintel),
    "bonn": (bonn_sequences, load_bonn),
    "kitti": (kitti_sequences, load_kitti),
    "tum": (tum_sequences, load_tum),
}
#: Benchmarks with a reader.
DATASETS = tuple(_READERS)


def _reader(dataset: str):
    if dataset not in _READERS:
        raise InputError(f"dataset: unknown {dataset!r} (expected one of {', '.join(DATASETS)})")
    return _READERS[dataset]


def list_sequences(dataset: str, root: str | os.PathLike, task: str | None = None) -> list[str]:
    """Sequences of ``dataset`` under ``root`` that the protocol evaluates for ``task``."""
    if task not in (None, "depth", "pose"):
        raise ValueError(f"task: expected 'depth', 'pose' or None, got {task!r}")
    return _reader(dataset)[0](root, task)


def load_sequence(dataset: str, root: str | os.PathLike, name: str) -> BenchmarkSequence:
    """One sequence, checked (frame/GT counts, pose files) — errors name the offending file."""
    return _reader(dataset)[1](root, name)

