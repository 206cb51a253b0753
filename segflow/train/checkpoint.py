"""Resumable training checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint folder holds ``last.safetensors`` (model weights, optimizer
moments, torch RNG state), ``best.safetensors`` (the best weights so far) and
``state.json`` (epoch, step, history, the run's fingerprint). Files are
written to a temporary name and renamed, so a crash mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from segflow.errors import ConfigError

LAST = "last.safetensors"
BEST = "best.safetensors"
STATE = "state.json"
_MODEL = "model."
_OPTIM = "optim."
_RNG = "rng.torch"


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _tensors(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as flat tensors ``optim.<param>.<key>`` plus JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            name = f"{_OPTIM}{index}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(_OPTIM):
            index, key = name[len(_OPTIM) :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for name, value in info.get("scalars", {}).items():
        index, key = name[len(_OPTIM) :].split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
) -> None:
    """Write ``last.safetensors`` and then ``state.json`` (the latter marks it complete)."""
    tensors = _tensors(model.state_dict(), _MODEL)
    optim, optim_info = optimizer_tensors(optimizer)
    tensors.update(optim)
    tensors[_RNG] = torch.get_rng_state()
    _atomic(folder / LAST, lambda tmp: save_file(tensors, tmp))
    payload = {**state, "optimizer": optim_info}
    text = json.dumps(payload, indent=1, default=_json_default)
    _atomic(folder / STATE, lambda tmp: Path(tmp).write_text(text))


def save_weights(path: Path, model: nn.Module) -> None:
    tensors = _tensors(model.state_dict(), _MODEL)
    _atomic(path, lambda tmp: save_file(tensors, tmp))


def load_state(folder: Path) -> dict[str, Any] | None:
    """The JSON state of the checkpoint in ``folder``; None when there is none."""
    path = folder / STATE
    if not path.is_file() or not (folder / LAST).is_file():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        raise ConfigError(
            f"checkpoint {path} is unreadable ({exc}); delete {folder} to start afresh"
        ) from None
    return state


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint {path} is damaged ({exc}); delete {path.parent} to start afresh"
        ) from None


def model_state(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(_MODEL) :]: v for k, v in tensors.items() if k.startswith(_MODEL)}


def restore_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
) -> None:
    """Load weights, optimizer moments and the torch RNG of ``last.safetensors`` in place."""
    tensors = read_tensors(folder / LAST)
    try:
        model.load_state_dict(model_state(tensors), strict=True)
        restore_optimizer(optimizer, tensors, state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint in {folder} does not fit this model ({str(exc).splitlines()[0]}); "
            "delete it to start afresh"
        ) from None
    if _RNG in tensors:
        torch.set_rng_state(tensors[_RNG])


def load_best(folder: Path, model: nn.Module) -> bool:
    """Load ``best.safetensors`` into ``model``; False when there is none."""
    path = folder / BEST
    if not path.is_file():
        return False
    model.load_state_dict(model_state(read_tensors(path)), strict=True)
    return True


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):
        return value.item()  # numpy / torch scalars
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
