"""Tiny versions of every registered architecture, so tests over the registry stay fast."""

from __future__ import annotations

from typing import Any

from torch import nn

from segflow.models import ModelMeta, arch_spec, new_model

# the smallest timm model that works with every smp decoder (including dilation for DeepLab)
ENCODER = "tu-test_resnet"

_TINY: dict[str, dict[str, Any]] = {
    "unet": {"decoder_channels": [16, 16, 8, 8, 8]},
    "unetplusplus": {"decoder_channels": [16, 16, 8, 8, 8]},
    "manet": {"decoder_channels": [16, 16, 8, 8, 8], "decoder_pab_channels": 8},
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "pspnet": {"psp_out_channels": 16},
    "deeplabv3": {"decoder_channels": 16},
    "deeplabv3plus": {"decoder_channels": 16},
    "pan": {"decoder_channels": 16},
    "upernet": {"decoder_channels": 16},
    "segformer": {"decoder_segmentation_channels": 16},
    "fcn32s": {"head_channels": 16},
    "fcn16s": {"head_channels": 16},
    "fcn8s": {"head_channels": 16},
    "unet2d": {"depth": 2, "base_channels": 4},
    "unet3d": {"depth": 2, "base_channels": 4},
    "pixel": {"hidden": [4]},
}


def tiny_kwargs(arch: str) -> dict[str, Any]:
    kwargs = dict(_TINY.get(arch, {}))
    if arch_spec(arch).family in ("smp", "fcn"):
        kwargs["encoder"] = ENCODER
    return kwargs


def tiny_in_channels(arch: str) -> int:
    return 1 if arch_spec(arch).spatial_dims == (3,) else 3


def tiny_model(arch: str, *, classes: int = 3, **extra: Any) -> tuple[nn.Module, ModelMeta]:
    kwargs = {**tiny_kwargs(arch), **extra}
    kwargs.setdefault("in_channels", tiny_in_channels(arch))
    return new_model(arch, classes=classes, **kwargs)
