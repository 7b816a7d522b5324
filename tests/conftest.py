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
