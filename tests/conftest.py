"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Keep Prefect quiet and local in tests (no server to start, no telemetry).
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")  # as the CLI runs it
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (reference fixtures and real data); skips when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (reference data is only beside the development checkout)")
    return SHARED


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    path = shared_dir / "geo4d-reference"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def prefect_env():
    """One temporary Prefect API for the whole session (flows in tests share it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_synthetic_videos(directory: Path, seeds, *, n_frames: int = 20, height: int = 48, width: int = 64,
                           name: str = "v{i}", fps: float = 10) -> list[Path]:
    """Render one SYNTHETIC scene per seed into ``directory``: ``<name>.mp4`` beside its ``<name>.gt``
    ground truth (``name`` formatted with the index ``i``); the video paths."""
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth

    paths = []
    for i, seed in enumerate(seeds):
        r = render(make_scene(seed=seed, n_frames=n_frames, height=height, width=width))
        stem = Path(directory) / name.format(i=i)
        write_video(stem.with_suffix(".mp4"), r.frames, fps=fps)
        write_ground_truth(stem.with_suffix(".gt"), r.geometry)
        paths.append(stem.with_suffix(".mp4"))
    return paths
