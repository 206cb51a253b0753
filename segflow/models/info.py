"""What a model file holds and costs: parameters, FLOPs per patch, stride, receptive field.

FLOPs are counted by running the model once on a zero patch under
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products; a multiply-add counts 2). The receptive field is estimated from the
gradient of the centre output pixel with respect to the input: the extent of
the input that influences it. When that extent reaches the patch border the
model has global context (pooling or attention over the whole patch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segflow.models.exported import onnx_parameter_count
from segflow.models.files import LoadedModel, load_model
from segflow.models.meta import ModelMeta


@dataclass(frozen=True)
class ModelInfo:
    path: Path | None
    sha256: str
    runtime: str
    meta: ModelMeta
    parameters: int | None
    trainable_parameters: int | None
    patch_size: tuple[int, ...]
    flops_per_patch: int | None
    output_stride: int
    receptive_field: tuple[int, ...] | None  # per axis, in pixels/voxels, within the patch
    global_context: bool | None  # the centre pixel sees the whole patch


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    return int(
        sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
    )


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on an input of ``input_shape`` (N, C, *spatial)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(torch.zeros(input_shape))
    return int(counter.get_total_flops())


def receptive_field(
    module: nn.Module, input_shape: tuple[int, ...], samples: int = 4
) -> tuple[tuple[int, ...], bool]:
    """Extent (per spatial axis) of the input that influences the centre output pixel.

    Several random inputs are used at once: on any one of them a ReLU network
    can have every unit at the centre switched off, hiding the dependence.
    """
    gen = torch.Generator().manual_seed(0)
    shape = (samples, *input_shape[1:])
    x = torch.randn(shape, generator=gen).requires_grad_(True)
    spatial = input_shape[2:]
    centre = tuple(s // 2 for s in spatial)
    with torch.enable_grad():
        out = module(x)
        out[(slice(None), slice(None), *centre)].sum().backward()
    assert x.grad is not None
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    idx = support.nonzero()
    if idx.numel() == 0:
        return tuple(1 for _ in spatial), False
    lo = idx.min(dim=0).values.tolist()
    hi = idx.max(dim=0).values.tolist()
    extent = tuple(int(h - low + 1) for low, h in zip(lo, hi, strict=True))
    whole = all(low == 0 and h == s - 1 for low, h, s in zip(lo, hi, spatial, strict=True))
    return extent, whole


def default_patch(meta: ModelMeta) -> tuple[int, ...]:
    stride = max(meta.output_stride, 1)
    if meta.patch_size is not None and len(meta.patch_size) == meta.spatial_dims:
        sizes = meta.patch_size
    else:
        sizes = (256, 256) if meta.spatial_dims == 2 else (64, 64, 64)
    return tuple(-(-s // stride) * stride for s in sizes)


def model_info(
    src: str | Path | LoadedModel,
    *,
    patch_size: tuple[int, ...] | None = None,
    flops: bool = True,
    receptive: bool = True,
) -> ModelInfo:
    """Inspect a model file (or a loaded model) at ``patch_size`` (default: its hint)."""
    loaded = src if isinstance(src, LoadedModel) else load_model(src)
    meta = loaded.meta
    patch = tuple(patch_size) if patch_size is not None else default_patch(meta)
    shape = (1, meta.in_channels, *patch)
    if loaded.runtime == "onnx":
        params = onnx_parameter_count(loaded.path) if loaded.path is not None else None
        return ModelInfo(
            loaded.path, loaded.sha256, loaded.runtime, meta, params, None, patch, None,
            meta.output_stride, None, None,
        )
    module = loaded.module.eval()
    n_flops = count_flops(module, shape) if flops else None
    extent: tuple[int, ...] | None = None
    whole: bool | None = None
    if receptive:
        extent, whole = receptive_field(module, shape, samples=4 if meta.spatial_dims == 2 else 2)
    return ModelInfo(
        path=loaded.path,
        sha256=loaded.sha256,
        runtime=loaded.runtime,
        meta=meta,
        parameters=count_parameters(module),
        trainable_parameters=count_parameters(module, trainable_only=True),
        patch_size=patch,
        flops_per_patch=n_flops,
        output_stride=meta.output_stride,
        receptive_field=extent,
        global_context=whole,
    )


def format_info(info: ModelInfo) -> list[tuple[str, str]]:
    """(label, value) rows for display."""
    meta = info.meta
    classes = ", ".join(c.name for c in meta.classes)
    norm = meta.normalization
    rows = [
        ("file", str(info.path) if info.path else "(in memory)"),
        ("sha256", info.sha256),
        ("runtime", info.runtime),
        ("architecture", meta.arch),
        ("arguments", ", ".join(f"{k}={v}" for k, v in meta.arch_kwargs.items()) or "-"),
        ("spatial dims", f"{meta.spatial_dims}-D"),
        ("in channels", str(meta.in_channels)
         + (f" ({', '.join(meta.band_names)})" if meta.band_names else "")),
        ("classes", f"{meta.num_classes} ({classes})"),
        ("normalization", f"mean={list(norm.mean)} std={list(norm.std)}"
         + (f" scale={list(norm.scale)}" if norm.scale else "")
         + (f" offset={list(norm.offset)}" if norm.offset else "") if norm else "none"),
        ("parameters", f"{info.parameters:,}" if info.parameters is not None else "n/a"),
        ("patch", "x".join(map(str, info.patch_size))
         + (f" (overlap {meta.overlap})" if meta.overlap is not None else "")),
        ("FLOPs per patch", _flops(info.flops_per_patch)),
        ("output stride", str(info.output_stride)),
        ("receptive field", _rf(info)),
    ]
    if meta.orientation:
        rows.append(("orientation", meta.orientation))
    if meta.nodata_class is not None:
        rows.append(("nodata class", str(meta.nodata_class)))
    return rows


def _flops(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e9:.3f} GFLOPs ({n:,})"


def _rf(info: ModelInfo) -> str:
    if info.receptive_field is None:
        return "n/a"
    text = "x".join(map(str, info.receptive_field))
    return text + (" (whole patch: global context)" if info.global_context else "")
