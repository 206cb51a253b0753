"""Checkpoints: safetensors + JSON, no pickle; optimizer moments and RNG survive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from segflow.errors import ConfigError
from segflow.train import checkpoint as ckpt


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(torch.randn(2, 2, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
    torch.manual_seed(5)
    loss = model(torch.randn(2, 2, 8, 8)).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return torch.cat([p.detach().ravel() for p in model.parameters()])


def test_round_trip_continues_identically(tmp_path: Path) -> None:
    model, opt = _trained()
    ckpt.save_checkpoint(tmp_path, model, opt, {"epoch": 3, "note": Path("x")})
    state = ckpt.load_state(tmp_path)
    assert state is not None and state["epoch"] == 3 and state["note"] == "x"
    json.loads((tmp_path / ckpt.STATE).read_text())  # plain JSON
    with open(tmp_path / ckpt.LAST, "rb") as fh:
        assert fh.read(9)[8:9] == b"{"  # a safetensors header, not a pickle

    other, other_opt = _trained()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    ckpt.restore_checkpoint(tmp_path, other, other_opt, state)
    assert torch.equal(_step(model, opt), _step(other, other_opt))


def test_best_weights_and_missing_checkpoint(tmp_path: Path) -> None:
    model, _ = _trained()
    assert ckpt.load_state(tmp_path) is None
    ckpt.save_weights(tmp_path / ckpt.BEST, model)
    fresh = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))
    assert ckpt.load_best(tmp_path, fresh)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_damaged_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    model, opt = _trained()
    ckpt.save_checkpoint(tmp_path, model, opt, {"epoch": 1})
    (tmp_path / ckpt.LAST).write_bytes(b"garbage")
    state = ckpt.load_state(tmp_path)
    assert state is not None
    with pytest.raises(ConfigError, match="damaged"):
        ckpt.restore_checkpoint(tmp_path, model, opt, state)
    wrong = nn.Conv2d(2, 3, 1)
    ckpt.save_checkpoint(tmp_path, model, opt, {"epoch": 1})
    with pytest.raises(ConfigError, match="does not fit this model"):
        ckpt.restore_checkpoint(tmp_path, wrong, torch.optim.AdamW(wrong.parameters()), state)
