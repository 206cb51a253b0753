"""The model registry: every architecture segflow can build, by name.

``create_model`` builds a fresh, randomly initialised network (never
downloading weights); ``build_model`` rebuilds the architecture a model file
describes. Every module built here carries ``segflow_output_stride``: the
multiple its spatial input sizes must have, which the predictor pads to.

smp architectures take any smp encoder name or any timm name prefixed
``tu-``. DPT is not registered: its ViT encoders have fixed-size position
embeddings, which does not fit patch grids of arbitrary size.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, cast

import torch
from torch import nn

from segflow.errors import ConfigError, ModelError
from segflow.models.archs import (
    DEFAULT_IMAGE_ARCH,
    DEFAULT_VOLUME_ARCH,
    ArchSpec,
    arch_spec,
    canonical_arch_kwargs,
    default_arch,
    list_models,
)
from segflow.models.messages import first_line
from segflow.models.meta import ClassInfo, ModelMeta, Normalization, default_colors
from segflow.options import did_you_mean

__all__ = [
    "DEFAULT_IMAGE_ARCH",
    "DEFAULT_VOLUME_ARCH",
    "ArchSpec",
    "arch_spec",
    "build_model",
    "canonical_arch_kwargs",
    "create_model",
    "default_arch",
    "list_models",
    "new_model",
    "output_stride_of",
]


def create_model(
    arch: str,
    *,
    encoder: str | None = None,
    in_channels: int = 3,
    classes: int = 2,
    **kwargs: Any,
) -> nn.Module:
    """A new randomly initialised model (no downloads); see :func:`list_models`.

    Extra ``kwargs`` go to the architecture (smp arguments such as
    ``decoder_channels``; ``output_stride``/``atrous_rates`` for DeepLab;
    ``depth``/``base_channels``/``norm`` for unet2d/unet3d;
    ``head_channels`` for FCNs). The returned module has
    ``segflow_output_stride`` set (see :func:`output_stride_of`).
    """
    spec = arch_spec(arch)
    arch_kwargs = canonical_arch_kwargs(spec.name, encoder, **kwargs)
    module = _construct(spec, arch_kwargs, in_channels, classes, ConfigError)
    _set_stride(module, _required_stride(spec, module, arch_kwargs, in_channels))
    return module


def new_model(
    arch: str,
    *,
    encoder: str | None = None,
    in_channels: int = 3,
    classes: int | Sequence[str] | Sequence[ClassInfo] = 2,
    band_names: Sequence[str] | None = None,
    normalization: Normalization | None = None,
    patch_size: Sequence[int] | None = None,
    overlap: float | None = None,
    orientation: str | None = None,
    nodata_class: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, ModelMeta]:
    """A new model and the metadata that describes it (ready for ``save_model``)."""
    spec = arch_spec(arch)
    infos = _class_infos(classes)
    arch_kwargs = canonical_arch_kwargs(spec.name, encoder, **kwargs)
    module = create_model(
        spec.name, encoder=encoder, in_channels=in_channels, classes=len(infos), **kwargs
    )
    stride = output_stride_of(module) or 1
    dims = int(arch_kwargs.get("spatial_dims", spec.spatial_dims[0]))
    try:
        meta = ModelMeta(
            arch=spec.name,
            arch_kwargs=arch_kwargs,
            spatial_dims=dims,  # type: ignore[arg-type]
            in_channels=in_channels,
            band_names=tuple(band_names) if band_names is not None else None,
            classes=tuple(infos),
            normalization=normalization,
            output_stride=stride,
            patch_size=tuple(patch_size) if patch_size is not None else None,
            overlap=overlap,
            orientation=orientation,
            nodata_class=nodata_class,
            provenance={**_versions(), **dict(provenance or {})},
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"invalid model metadata: {_one_line_validation(exc)}") from None
    if meta.patch_size is not None and any(s % stride for s in meta.patch_size):
        raise ConfigError(
            f"patch size {meta.patch_size} must be a multiple of {spec.name}'s output stride {stride}"
        )
    return module, meta


def build_model(meta: ModelMeta) -> nn.Module:
    """The (randomly initialised) architecture a model file's metadata describes."""
    if meta.arch in ("torchscript", "onnx"):
        raise ModelError(
            f"metadata describes an exported {meta.arch} model, not an architecture to build; "
            "open the model file with segflow.models.load_model"
        )
    try:
        spec = arch_spec(meta.arch)
    except ConfigError as exc:
        raise ModelError(f"model metadata: {exc}") from None
    if meta.spatial_dims not in spec.spatial_dims:
        raise ModelError(
            f"model metadata says spatial_dims={meta.spatial_dims} but {spec.name} is "
            f"{'/'.join(map(str, spec.spatial_dims))}-D"
        )
    kwargs = dict(meta.arch_kwargs)
    if spec.family == "pixel":
        kwargs.setdefault("spatial_dims", meta.spatial_dims)
    module = _construct(spec, kwargs, meta.in_channels, meta.num_classes, ModelError)
    _set_stride(module, meta.output_stride)
    return module


def output_stride_of(module: nn.Module) -> int | None:
    """The input-size multiple a module built here needs (None for foreign modules)."""
    for name in ("segflow_output_stride", "output_stride"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _set_stride(module: nn.Module, stride: int) -> None:
    # a plain int attribute (not a buffer): not saved with the weights, ignored by exports
    module.__dict__["segflow_output_stride"] = int(stride)


def _class_infos(classes: int | Sequence[str] | Sequence[ClassInfo]) -> list[ClassInfo]:
    if isinstance(classes, int):
        if classes < 1:
            raise ConfigError(f"a model needs at least one class, got {classes}")
        names: list[str | ClassInfo] = [f"class{i}" for i in range(classes)]
    else:
        names = list(classes)
    if not names:
        raise ConfigError("a model needs at least one class")
    colors = default_colors(len(names))
    return [
        n if isinstance(n, ClassInfo) else ClassInfo(name=str(n), color=colors[i])
        for i, n in enumerate(names)
    ]


def _versions() -> dict[str, Any]:
    found: dict[str, str] = {}
    for package in ("segflow", "torch", "segmentation-models-pytorch", "timm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return {"created_with": found}


def _one_line_validation(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "metadata"
        return f"{loc}: {first.get('msg', '')}"
    return first_line(exc)


def _construct(
    spec: ArchSpec,
    arch_kwargs: Mapping[str, Any],
    in_channels: int,
    classes: int,
    error: type[ConfigError] | type[ModelError],
) -> nn.Module:
    kwargs = dict(arch_kwargs)
    encoder = kwargs.get("encoder")
    if in_channels < 1 or classes < 1:
        raise error(f"in_channels and classes must be >= 1, got {in_channels} and {classes}")
    try:
        with warnings.catch_warnings():
            # smp warns that its own "timm-" encoder names are deprecated; nothing to act on here
            warnings.simplefilter("ignore", DeprecationWarning)
            return _construct_unchecked(spec, kwargs, in_channels, classes)
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as exc:
        what = f"{spec.name} with encoder '{encoder}'" if encoder else spec.name
        raise error(f"cannot build {what}: {first_line(exc)}{_encoder_hint(encoder)}") from None


def _construct_unchecked(
    spec: ArchSpec, kwargs: dict[str, Any], in_channels: int, classes: int
) -> nn.Module:
    if spec.family == "smp":
        encoder = kwargs.pop("encoder", spec.default_encoder)
        return _smp_model(spec.name, encoder, in_channels, classes, kwargs)
    if spec.family == "fcn":
        from segflow.models.fcn import FCN

        encoder = kwargs.pop("encoder", spec.default_encoder)
        variant = cast(Literal["32s", "16s", "8s"], spec.name.removeprefix("fcn"))
        return FCN(encoder, in_channels, classes, variant=variant, **kwargs)
    if spec.family == "unet":
        from segflow.models.unet import UNet

        return UNet(in_channels, classes, spatial_dims=spec.spatial_dims[0], **kwargs)
    from segflow.models.pixel import PixelClassifier

    return PixelClassifier(
        in_channels,
        classes,
        hidden=tuple(kwargs.get("hidden", ())),
        spatial_dims=int(kwargs.get("spatial_dims", 2)),
    )


def _smp_model(
    name: str, encoder: str, in_channels: int, classes: int, kwargs: dict[str, Any]
) -> nn.Module:
    # smp (and timm under it) load only here: plain architectures and exports never need them
    import segmentation_models_pytorch as smp

    module: nn.Module = smp.create_model(
        name,
        encoder_name=encoder,
        encoder_weights=None,
        in_channels=in_channels,
        classes=classes,
        **kwargs,
    )
    return module


def _required_stride(
    spec: ArchSpec, module: nn.Module, arch_kwargs: Mapping[str, Any], in_channels: int
) -> int:
    if spec.family != "smp":
        stride = output_stride_of(module)
        return stride if stride is not None else 1
    stride = _encoder_stride(module, in_channels)
    if spec.name == "pan":
        # PAN's feature pyramid attention pools the deepest features three times by 2
        stride *= 8
    # verify on a real forward: some encoder/decoder pairs need larger minimum sizes
    for _ in range(4):
        if _forward_ok(module, in_channels, stride):
            return stride
        stride *= 2
    raise ConfigError(
        f"{spec.name} with encoder '{arch_kwargs.get('encoder')}' fails on every probed input "
        f"size up to {stride // 2}; pick another encoder"
    )


def _encoder_stride(module: nn.Module, in_channels: int) -> int:
    """The real downsampling of the deepest encoder features, measured on a small input."""
    encoder = cast(nn.Module, module.encoder)
    depth = int(getattr(encoder, "_depth", 5))
    size = 2 << depth  # twice the deepest stride
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            features = encoder(torch.zeros(1, in_channels, size, size))
        measured = size // int(features[-1].shape[-1])
    except Exception:  # fall back to what the encoder declares
        measured = int(getattr(encoder, "output_stride", 1 << depth))
    finally:
        module.train(was_training)
    return max(measured, 1)


def _forward_ok(module: nn.Module, in_channels: int, size: int) -> bool:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, in_channels, size, size))
        return isinstance(out, torch.Tensor) and tuple(out.shape[2:]) == (size, size)
    except Exception:
        return False
    finally:
        module.train(was_training)


def _encoder_hint(encoder: str | None) -> str:
    if not encoder or encoder.startswith("tu-"):
        return ""
    from segmentation_models_pytorch.encoders import get_encoder_names

    names = get_encoder_names()
    if encoder in names:
        return ""
    hint = did_you_mean(encoder, names)
    return f"{hint} (timm models work as 'tu-<name>')" if hint else ""
