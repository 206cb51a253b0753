"""The architecture table: names, families, defaults and the arguments a model file records.

Nothing here imports torch: listing architectures, checking a name or the
arguments a model file will record costs no more than reading this module.
:mod:`segflow.models.registry` builds the networks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from segflow.errors import ConfigError
from segflow.options import did_you_mean

Family = Literal["smp", "fcn", "unet", "pixel"]


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: Family
    spatial_dims: tuple[int, ...]
    default_encoder: str | None
    description: str


_SMP: dict[str, str] = {
    "unet": "U-Net decoder on an encoder (smp)",
    "unetplusplus": "U-Net++ nested skip decoder (smp)",
    "fpn": "Feature pyramid network (smp)",
    "pspnet": "Pyramid scene parsing network (smp)",
    "deeplabv3": "DeepLabV3: atrous encoder + ASPP (smp); output_stride 8|16, atrous_rates",
    "deeplabv3plus": "DeepLabV3+: ASPP + low-level decoder (smp); output_stride 8|16, atrous_rates",
    "linknet": "LinkNet (smp)",
    "manet": "Multi-scale attention net (smp)",
    "pan": "Pyramid attention network (smp)",
    "upernet": "UPerNet (smp)",
    "segformer": "SegFormer all-MLP decoder (smp)",
}

_SPECS: dict[str, ArchSpec] = {
    **{n: ArchSpec(n, "smp", (2,), "resnet34", d) for n, d in _SMP.items()},
    "fcn32s": ArchSpec("fcn32s", "fcn", (2,), "resnet34", "FCN-32s: 1x1 conv classifier, 32x up"),
    "fcn16s": ArchSpec("fcn16s", "fcn", (2,), "resnet34", "FCN-16s: + stride-16 skip"),
    "fcn8s": ArchSpec("fcn8s", "fcn", (2,), "resnet34", "FCN-8s: + stride-16 and stride-8 skips"),
    "unet2d": ArchSpec("unet2d", "unet", (2,), None, "paper U-Net, 2-D (depth, base_channels)"),
    "unet3d": ArchSpec("unet3d", "unet", (3,), None, "paper U-Net, 3-D; the volume default"),
    "pixel": ArchSpec("pixel", "pixel", (2, 3), None, "per-pixel 1x1 classifier (hidden widths)"),
}

# friendly names for smp arguments (DeepLab / PAN)
_ALIASES = {"output_stride": "encoder_output_stride", "atrous_rates": "decoder_atrous_rates"}
# architecture defaults recorded explicitly in model files, so later default changes cannot
# silently change what an old file builds
_UNET_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet2d": {"depth": 4, "base_channels": 64, "norm": "batch"},
    "unet3d": {"depth": 3, "base_channels": 32, "norm": "batch"},
}
_FCN_DEFAULTS: dict[str, Any] = {"head_channels": 512, "dropout": 0.5}
_REFUSED = {
    "encoder_name": "pass encoder=... instead",
    "in_channels": "pass in_channels=... instead",
    "classes": "pass classes=... instead",
    "aux_params": "segflow models return segmentation logits only",
    "activation": "segflow models return logits; the engine applies softmax/argmax",
}

DEFAULT_VOLUME_ARCH = "unet3d"
DEFAULT_IMAGE_ARCH = "unet"


def list_models() -> list[str]:
    """Names accepted by :func:`segflow.models.create_model`, in registry order."""
    return list(_SPECS)


def arch_spec(arch: str) -> ArchSpec:
    """The registry entry for ``arch``; ConfigError with a suggestion when unknown."""
    spec = _SPECS.get(arch.lower())
    if spec is None:
        hint = did_you_mean(arch.lower(), _SPECS)
        raise ConfigError(f"unknown architecture '{arch}' (known: {', '.join(_SPECS)}){hint}")
    return spec


def default_arch(spatial_dims: int) -> str:
    return DEFAULT_VOLUME_ARCH if spatial_dims == 3 else DEFAULT_IMAGE_ARCH


def canonical_arch_kwargs(arch: str, encoder: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """The JSON-safe ``arch_kwargs`` a model file records for this architecture."""
    spec = arch_spec(arch)
    _refuse_arguments(spec, kwargs)
    if spec.family != "pixel":  # pixel is built for either; the others have fixed dims
        _check_spatial_dims(spec, kwargs.pop("spatial_dims", None))
    out = _encoder_kwargs(spec, encoder)
    out.update(_FAMILY_KWARGS[spec.family](spec, kwargs))
    return _json_safe(spec.name, out)


def parse_arch_args(items: Iterable[str], option: str = "--arg") -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are JSON when they parse (numbers, lists), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string such as norm=instance
        out[key.strip()] = value
    return out


def _refuse_arguments(spec: ArchSpec, kwargs: dict[str, Any]) -> None:
    for key, why in _REFUSED.items():
        if key in kwargs:
            raise ConfigError(f"argument '{key}' is not accepted for {spec.name}: {why}")
    weights = kwargs.pop("encoder_weights", None)
    if weights is not None:
        raise ConfigError(
            f"encoder_weights={weights!r}: segflow never downloads weights; create the model, "
            "then load a local file with segflow.models.load_encoder_weights"
        )


def _check_spatial_dims(spec: ArchSpec, dims: Any) -> None:
    if dims is not None and dims not in spec.spatial_dims:
        other = "unet3d" if dims == 3 else "unet2d"
        raise ConfigError(
            f"{spec.name} is {spec.spatial_dims[0]}-D, not {dims}-D; use '{other}' for {dims}-D"
        )


def _encoder_kwargs(spec: ArchSpec, encoder: str | None) -> dict[str, Any]:
    if spec.family in ("smp", "fcn"):
        return {"encoder": encoder or spec.default_encoder}
    if encoder is not None:
        raise ConfigError(f"{spec.name} has no encoder; drop encoder={encoder!r}")
    return {}


def _smp_kwargs(spec: ArchSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {_ALIASES.get(key, key): value for key, value in kwargs.items()}


def _fcn_kwargs(spec: ArchSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    if "variant" in kwargs:
        raise ConfigError(f"the FCN variant is the architecture name; drop variant= ({spec.name})")
    return {**_FCN_DEFAULTS, **kwargs}


def _unet_kwargs(spec: ArchSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**_UNET_DEFAULTS[spec.name], **kwargs}


def _pixel_kwargs(spec: ArchSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    rest = dict(kwargs)
    out = {"hidden": list(rest.pop("hidden", [])), "spatial_dims": int(rest.pop("spatial_dims", 2))}
    if rest:
        raise ConfigError(f"unknown arguments for pixel: {', '.join(rest)}")
    return out


_FAMILY_KWARGS: dict[Family, Callable[[ArchSpec, dict[str, Any]], dict[str, Any]]] = {
    "smp": _smp_kwargs,
    "fcn": _fcn_kwargs,
    "unet": _unet_kwargs,
    "pixel": _pixel_kwargs,
}


def _json_safe(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        return dict(json.loads(json.dumps(kwargs)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"arguments for {arch} must be plain JSON values (numbers, strings, lists): {exc}"
        ) from None
