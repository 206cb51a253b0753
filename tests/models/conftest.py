"""Fixtures for the model tests: tiny model files built once per session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from segflow.models import save_model
from tests.models.tiny import tiny_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny models: a second intra-op thread costs more in spinning than it saves,
    # badly so on a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_file(arch)``: path of a saved tiny model of that architecture (built once)."""
    folder = tmp_path_factory.mktemp("tiny-models")
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            torch.manual_seed(0)
            module, meta = tiny_model(arch)
            path = folder / f"{arch}.safetensors"
            save_model(module, meta, path)
            cache[arch] = path
        return cache[arch]

    return get
