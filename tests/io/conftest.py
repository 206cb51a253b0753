"""Fixtures for reader tests: where the real sample files are."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.io.s3server import S3Server, s3_server


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


@pytest.fixture(scope="session")
def s3_server_session() -> Iterator[S3Server]:
    """One S3-compatible server (moto, on loopback, credentials enforced) per test session."""
    pytest.importorskip("moto")
    with s3_server() as server:
        yield server


@pytest.fixture
def s3(s3_server_session: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server, with this process's AWS_* environment pointing at it."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3_server_session.env.items():
        monkeypatch.setenv(name, value)
    return s3_server_session
