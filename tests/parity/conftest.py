"""Fixtures for the nnU-Net v1 parity tests (see harness.py for the functions)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:      # so tests can `import harness` under any pytest import mode
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "parity: compares against the real nnU-Net v1 (builds a cached side environment)")


@pytest.fixture(scope="session")
def side_python() -> Path:
    """The nnU-Net v1 side env's python; built once (about a minute) and cached across sessions."""
    return harness.side_python()
