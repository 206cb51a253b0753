"""Fixtures for reader tests: where the real sample files are."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


def _shared_data_dir() -> Path:
    env = os.environ.get("SEGFLOW_SHARED_DATA")
    if env:
        return Path(env)
    # tests/io/conftest.py -> repo root is parents[2]; the workspace keeps data beside it
    return (Path(__file__).resolve().parents[2] / "../shared/data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $SEGFLOW_SHARED_DATA); skips the test when absent."""
    root = _shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real sample data not found at {root}")
    return root


@pytest.fixture
def shared_file(shared_data: Path) -> Callable[[str], Path]:
    """``shared_file("geo/x.tif")``: the path, or skip when that one file is missing."""

    def get(relative: str) -> Path:
        path = shared_data / relative
        if not path.is_file():
            pytest.skip(f"sample file {relative} not found in {shared_data}")
        return path

    return get
