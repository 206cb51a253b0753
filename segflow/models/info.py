"""What a model file holds and costs: parameters, FLOPs per patch, stride, receptive field.

FLOPs are counted by running the model once on a zero patch under
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products; a multiply-add counts 2). The receptive field is estimated from the
gradient of the centre output pixel with respect to the input: the extent of
the input that influences it. When it spans the whole patch, the receptive
field is at least the patch (deep encoders, or pooling/attention over the patch).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
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
    global_context: bool | None  # the centre pixel sees the whole patch (every axis)


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on an input of ``input_shape`` (N, C, *spatial).

    Counted on the meta device (shapes only, no arithmetic) where the module
    allows it, so even large 3-D patches cost nothing to count.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if isinstance(module, torch.jit.ScriptModule):  # cannot move to the meta device
        return count_flops_eager(module, input_shape)
    try:
        ghost = copy.deepcopy(module).to("meta")
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            ghost(torch.zeros(input_shape, device="meta"))
    except Exception:  # an op without a meta implementation: count on real tensors
        return count_flops_eager(module, input_shape)
    return int(counter.get_total_flops())


def count_flops_eager(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(torch.zeros(input_shape))
    return int(counter.get_total_flops())


def receptive_field(
    module: nn.Module,
    input_shape: tuple[int, ...],
    *,
    samples: int = 4,
    thin: int | None = None,
) -> tuple[tuple[int, ...], bool]:
    """Extent (per spatial axis) of the input that influences the centre output pixel.

    Several random inputs are used at once: on any one of them a ReLU network
    can have every unit at the centre switched off, hiding the dependence.
    With ``thin`` (a valid input size, e.g. the output stride), each axis is
    measured on an input that is full-length along that axis only: far
    cheaper, and the extent along an axis does not need the others' width.
    """
    spatial = tuple(input_shape[2:])
    if thin is None:
        return _support(module, (samples, input_shape[1], *spatial), range(len(spatial)))
    extents: list[int] = []
    whole = True
    for axis, size in enumerate(spatial):
        sizes = [min(thin, s) for s in spatial]
        sizes[axis] = size
        extent, axis_whole = _support(module, (samples, input_shape[1], *sizes), [axis])
        extents.append(extent[0])
        whole = whole and axis_whole
    return tuple(extents), whole


def _support(
    module: nn.Module, shape: tuple[int, ...], axes: Iterable[int]
) -> tuple[tuple[int, ...], bool]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).requires_grad_(True)
    spatial = shape[2:]
    centre = tuple(s // 2 for s in spatial)
    with torch.enable_grad():
        out = module(x)
        out[(slice(None), slice(None), *centre)].sum().backward()
    assert x.grad is not None
    grad = x.grad.abs().sum(dim=(0, 1))
    extents: list[int] = []
    whole = True
    for axis in axes:
        others = tuple(d for d in range(grad.ndim) if d != axis)
        line = (grad.sum(dim=others) if others else grad) > 0
        idx = line.nonzero().flatten()
        if idx.numel() == 0:
            extents.append(1)
            whole = False
            continue
        lo, hi = int(idx.min()), int(idx.max())
        extents.append(hi - lo + 1)
        whole = whole and lo == 0 and hi == spatial[axis] - 1
    return tuple(extents), whole


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
            loaded.path,
            loaded.sha256,
            loaded.runtime,
            meta,
            params,
            None,
            patch,
            None,
            meta.output_stride,
            None,
            None,
        )
    module = loaded.module.eval()
    n_flops = count_flops(module, shape) if flops else None
    extent: tuple[int, ...] | None = None
    whole: bool | None = None
    if receptive:
        extent, whole = receptive_field(module, shape, thin=max(meta.output_stride, 1))
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
        (
            "in channels",
            str(meta.in_channels) + (f" ({', '.join(meta.band_names)})" if meta.band_names else ""),
        ),
        ("classes", f"{meta.num_classes} ({classes})"),
        (
            "normalization",
            f"mean={list(norm.mean)} std={list(norm.std)}"
            + (f" scale={list(norm.scale)}" if norm.scale else "")
            + (f" offset={list(norm.offset)}" if norm.offset else "")
            if norm
            else "none",
        ),
        ("parameters", f"{info.parameters:,}" if info.parameters is not None else "n/a"),
        (
            "patch",
            "x".join(map(str, info.patch_size))
            + (f" (overlap {meta.overlap})" if meta.overlap is not None else ""),
        ),
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
    return text + (" (spans the whole patch)" if info.global_context else "")
