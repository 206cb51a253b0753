"""Reading PyTorch ``.pt``/``.pth`` files without unpickling arbitrary objects.

A ``torch.save`` file is a pickle: loading it the ordinary way runs whatever
code its author put in it. segflow only ever calls
``torch.load(weights_only=True)``, whose restricted unpickler accepts
tensors and plain containers and refuses every other global *before*
anything executes; the refusal becomes a one-line :class:`ModelError`.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from segflow.errors import ModelError
from segflow.models.messages import first_line

# common wrappers around a state dict in training checkpoints
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
# prefixes added by DataParallel / DistributedDataParallel and torch.compile
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives carry a ``code/`` folder; ``torch.save`` zips do not."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in name or name.startswith("code/") for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` file (plain or wrapped state dict), loaded safely."""
    path = Path(path)
    obj = safe_torch_load(path)
    return unwrap_state_dict(obj, path)


def safe_torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)`` with its failures turned into one-line ModelErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"refusing to load {path.name}: it holds Python objects, not only tensors "
            f"({_unsafe_global(exc)}); only plain state dicts are loaded, never arbitrary "
            "pickles. Re-save it with torch.save(model.state_dict(), ...) in a trusted environment"
        ) from None
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(
            f"cannot read {path.name}: the file is truncated or not a PyTorch file "
            f"({first_line(exc, 160)})"
        ) from None


def unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _is_tensor_dict(inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        kind = type(obj).__name__
        keys = (
            f" with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, Mapping) else ""
        )
        raise ModelError(
            f"{path.name} holds a {kind}{keys}, not a state dict of tensors; save "
            "model.state_dict() (optionally under a 'state_dict' key)"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _is_tensor_dict(obj: Mapping[object, object]) -> bool:
    tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
    return tensors > 0 and all(isinstance(k, str) for k in obj)


def _unsafe_global(exc: BaseException) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if match:
        return f"it references {match.group(1)}"
    match = re.search(r"Unsupported operand (\d+)", str(exc))
    if match:
        return f"pickle opcode {match.group(1)} is not allowed"
    return "the restricted unpickler refused it"
