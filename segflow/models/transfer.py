"""Transfer learning: encoder weights from a local file, with a report of what matched.

The file may be a timm, torchvision or smp state dict (``.safetensors``, or
``.pt``/``.pth``/``.bin`` read with ``torch.load(weights_only=True)``). Keys
are matched after removing wrapper prefixes (``module.``, ``encoder.``,
``model.``, ``backbone.``) and treating ``_`` and ``.`` alike (timm's feature
wrappers rename ``stages.0`` to ``stages_0``). When the model has
``in_channels != 3``, 3-channel first-convolution weights are adapted the way
smp does: one channel gets the sum over RGB, more channels cycle through RGB
and are scaled by ``3 / in_channels`` so activations keep their magnitude.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from segflow.errors import ConfigError, ModelError
from segflow.models import legacy

_PREFIXES = ("module.", "_orig_mod.", "encoder.", "backbone.", "model.")


@dataclass(frozen=True)
class TransferReport:
    matched: tuple[str, ...]  # encoder keys loaded from the file
    missing: tuple[str, ...]  # encoder keys the file had nothing for (left as initialised)
    unexpected: tuple[str, ...]  # file keys not used (e.g. a classifier head)
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # key, file, model
    adapted: tuple[str, ...]  # first-convolution keys adapted to in_channels

    def summary(self) -> str:
        text = (
            f"{len(self.matched)} matched, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} with other shapes"
        )
        return text + (f", adapted {', '.join(self.adapted)}" if self.adapted else "")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` or ``.pt``/``.pth``/``.bin`` file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path.name}: unreadable safetensors file ({exc})") from None
    return legacy.read_state_dict(path)


def load_encoder_weights(
    model: nn.Module, weights: str | Path | dict[str, torch.Tensor], *, strict: bool = False
) -> TransferReport:
    """Copy matching encoder weights from ``weights`` into ``model.encoder`` (in place).

    ``strict=True`` raises ModelError unless every encoder weight was found.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(
            f"{type(model).__name__} has no .encoder; transfer works for smp architectures and FCNs"
        )
    source = weights if isinstance(weights, dict) else read_weights(weights)
    target = encoder.state_dict()
    by_canon = _canonical_index(source)
    matched, missing, adapted = [], [], []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    used: set[str] = set()
    in_channels = _model_in_channels(encoder)
    with torch.no_grad():
        for key, param in target.items():
            src_key = by_canon.get(_canon(key))
            if src_key is None:
                missing.append(key)
                continue
            used.add(src_key)
            value = source[src_key]
            if tuple(value.shape) != tuple(param.shape):
                fitted = _adapt_first_conv(value, param, in_channels)
                if fitted is None:
                    mismatched.append((key, tuple(value.shape), tuple(param.shape)))
                    continue
                value = fitted
                adapted.append(key)
            param.copy_(value.to(param.dtype))
            matched.append(key)
    unexpected = tuple(k for k in source if k not in used)
    report = TransferReport(
        tuple(matched), tuple(missing), unexpected, tuple(mismatched), tuple(adapted)
    )
    if not matched:
        raise ModelError(
            "no encoder weight in the file matches this encoder (e.g. file key "
            f"'{next(iter(source), '-')}' vs encoder key '{next(iter(target), '-')}'); "
            "is it for another backbone?"
        )
    if strict and (missing or mismatched):
        raise ModelError(f"encoder weights incomplete: {report.summary()}")
    return report


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """smp's rule for a pretrained first convolution with a new number of input channels."""
    default = weight.shape[1]
    if in_channels == default:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % default
    return weight[:, idx] * (default / in_channels)


def _adapt_first_conv(
    value: torch.Tensor, param: torch.Tensor, in_channels: int | None
) -> torch.Tensor | None:
    if in_channels is None or value.ndim < 3 or value.ndim != param.ndim:
        return None
    if param.shape[1] != in_channels or value.shape[1] == in_channels:
        return None
    if value.shape[0] != param.shape[0] or value.shape[2:] != param.shape[2:]:
        return None
    return adapt_first_conv(value, in_channels)


def _model_in_channels(encoder: nn.Module) -> int | None:
    value = getattr(encoder, "_in_channels", None)
    if isinstance(value, int):
        return value
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            return int(module.in_channels)
    return None


def _canon(key: str) -> str:
    while True:
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            return re.sub(r"[._]", ".", key)


def _canonical_index(source: dict[str, torch.Tensor]) -> dict[str, str]:
    index: dict[str, str] = {}
    for key in source:
        index.setdefault(_canon(key), key)
    return index
