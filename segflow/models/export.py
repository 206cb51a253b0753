"""Export a segflow model to TorchScript or ONNX, verified against the original.

Both exports keep the batch and spatial axes dynamic, and both are checked on
two random inputs of different batch and spatial sizes: an export that only
works at the size it was traced at is refused rather than written.

TorchScript: ``torch.jit.script`` first (keeps shape logic exact), falling
back to ``torch.jit.trace`` for models that do not script (smp UnetPlusPlus).

ONNX: the TorchScript-based exporter (``dynamo=False``) with ``dynamic_axes``.
With torch 2.15 it is fast (under ~2 s per smp model) and deterministic; the
dynamo exporter took 4-8 s per model and specialised adaptive average
pooling to the export size (PSPNet/UPerNet then fail at runtime on other
sizes). Neither exporter handles adaptive pooling with dynamic sizes, so
before export it is rewritten as an exact product with averaging matrices.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from segflow.errors import ModelError
from segflow.models.exported import (
    OnnxModule,
    default_sidecar_path,
    import_onnxruntime,
    load_torchscript,
    write_sidecar,
)
from segflow.models.files import LoadedModel, load_model, sha256_file
from segflow.models.messages import first_line
from segflow.models.meta import ModelMeta

Target = Literal["torchscript", "onnx"]
ONNX_OPSET = 17

# torch.jit.trace has no annotations; typed once here rather than ignored at each use
_jit_trace = cast(Callable[..., torch.jit.ScriptModule], torch.jit.trace)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: Path
    sha256: str
    method: str  # "script", "trace" or "onnx"
    max_abs_diff: float
    checked_shapes: tuple[tuple[int, ...], ...]


def export_model(
    src: str | Path | LoadedModel,
    to: Target,
    out: str | Path | None = None,
    *,
    atol: float = 1e-4,
    sample_size: tuple[int, ...] | None = None,
    sidecar_format: str = "yaml",
    seed: int = 0,
) -> ExportResult:
    """Export ``src`` (a model file or a LoadedModel) and write the metadata sidecar.

    The export is run on two random inputs and compared with the original
    model; it is refused (and nothing is left behind) when the largest
    difference exceeds ``atol`` times the logits' scale (at least 1).
    """
    loaded = src if isinstance(src, LoadedModel) else load_model(src)
    if to not in ("torchscript", "onnx"):
        raise ModelError(f"export target must be 'torchscript' or 'onnx', got {to!r}")
    if loaded.runtime != "torch":
        raise ModelError(f"only native models can be exported; this one is {loaded.runtime}")
    meta = loaded.meta
    out_path = Path(out) if out is not None else _default_out(loaded, to)
    if loaded.path is not None and out_path.resolve() == Path(loaded.path).resolve():
        raise ModelError(f"export would overwrite its source {out_path.name}; choose another -o")
    module = copy.deepcopy(loaded.module).eval().cpu()
    inputs = _check_inputs(meta, sample_size, seed)
    with torch.no_grad():
        expected = [module(x) for x in inputs]
    sidecar = default_sidecar_path(out_path, sidecar_format)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # write next to the target and move into place only once verified
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        if to == "torchscript":
            method = _export_torchscript(module, inputs[0], tmp)
            exported: nn.Module = load_torchscript(tmp)
        else:
            import_onnxruntime()
            method = "onnx"
            _export_onnx(module, inputs[0], tmp)
            exported = OnnxModule(tmp, spatial_dims=meta.spatial_dims)
        diff = _compare(exported, inputs, expected, atol, to)
        del exported  # release the file before moving it (onnxruntime maps it)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    digest = sha256_file(out_path)
    write_sidecar(_export_meta(meta, to, loaded, method, diff), sidecar)
    return ExportResult(
        out_path, sidecar, digest, method, diff, tuple(tuple(x.shape) for x in inputs)
    )


def onnx_friendly(module: nn.Module) -> nn.Module:
    """Rewrite adaptive average pooling (and smp PSP blocks) so ONNX keeps sizes dynamic."""
    psp_blocks: tuple[type[nn.Module], ...] = ()
    try:
        from segmentation_models_pytorch.decoders.pspnet.decoder import PSPBlock

        psp_blocks = (PSPBlock,)
    except ImportError:  # pragma: no cover - smp is a dependency
        pass
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d):
                dims = 3 if isinstance(child, nn.AdaptiveAvgPool3d) else 2
                setattr(parent, name, MatrixAdaptiveAvgPool(child.output_size, dims))
            elif isinstance(child, psp_blocks):
                setattr(parent, name, _PoolUpsample(cast(nn.Module, child.pool)))
    for child in module.modules():
        if isinstance(child, _PoolUpsample):
            onnx_friendly(child.pool)
    return module


class MatrixAdaptiveAvgPool(nn.Module):
    """Adaptive average pooling as ``P_h @ x @ P_w^T`` with the same windows as PyTorch's."""

    def __init__(self, output_size: Any, dims: int) -> None:
        super().__init__()
        size = output_size if isinstance(output_size, tuple | list) else (output_size,) * dims
        self.output_size = tuple(int(s) if s is not None else -1 for s in size)
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mats = []
        for i, out in enumerate(self.output_size):
            n = x.shape[x.ndim - self.dims + i]
            mats.append(_pool_matrix(n, out if out > 0 else n, x))
        if self.dims == 2:
            return torch.einsum("ih,nchw,jw->ncij", mats[0], x, mats[1])
        return torch.einsum("id,jh,kw,ncdhw->ncijk", mats[0], mats[1], mats[2], x)


def _pool_matrix(n: Any, out: int, like: torch.Tensor) -> torch.Tensor:
    # PyTorch's windows: [floor(i*n/out), ceil((i+1)*n/out))
    i = torch.arange(out, device=like.device)
    start = torch.div(i * n, out, rounding_mode="floor")
    end = torch.div((i + 1) * n + out - 1, out, rounding_mode="floor")
    pos = torch.arange(n, device=like.device)
    window = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    weights = window.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


class _PoolUpsample(nn.Module):
    """smp PSPBlock without its ONNX branch (F.interpolate 'area' has no dynamic export)."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        return F.interpolate(self.pool(x), size=size, mode="bilinear", align_corners=True)


def _export_torchscript(module: nn.Module, example: torch.Tensor, out: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted: torch.jit.ScriptModule = torch.jit.script(module)
            method = "script"
        except Exception:  # not scriptable (e.g. ModuleDict indexing): trace instead
            scripted = _jit_trace(module, example, check_trace=False)
            method = "trace"
        torch.jit.save(scripted, str(out))
    return method


def _export_onnx(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    spatial = {i: f"s{i - 2}" for i in range(2, example.ndim)}
    axes = {0: "batch", **spatial}
    friendly = onnx_friendly(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                friendly,
                (example,),
                str(out),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": axes, "logits": axes},
                do_constant_folding=True,
            )
        except Exception as exc:
            raise ModelError(f"ONNX export failed: {first_line(exc)}") from None


def _check_inputs(
    meta: ModelMeta, sample_size: tuple[int, ...] | None, seed: int
) -> list[torch.Tensor]:
    stride = max(meta.output_stride, 1)
    dims = meta.spatial_dims
    if sample_size is None:
        base = 64 if dims == 2 else 16
        sample_size = tuple(max(stride, base // stride * stride) for _ in range(dims))
    if len(sample_size) != dims or any(s % stride for s in sample_size):
        raise ModelError(
            f"export sample size {sample_size} must have {dims} sizes, multiples of {stride}"
        )
    second = tuple(s + stride * (i + 1) for i, s in enumerate(sample_size))
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(1, meta.in_channels, *sample_size, generator=gen),
        torch.randn(2, meta.in_channels, *second, generator=gen),
    ]


def _compare(
    exported: nn.Module,
    inputs: list[torch.Tensor],
    expected: list[torch.Tensor],
    atol: float,
    to: str,
) -> float:
    worst = 0.0
    for x, ref in zip(inputs, expected, strict=True):
        try:
            with torch.no_grad():
                got = exported(x)
        except Exception as exc:
            raise ModelError(
                f"the {to} export fails on input shape {tuple(x.shape)}: {first_line(exc)}"
            ) from None
        if tuple(got.shape) != tuple(ref.shape):
            raise ModelError(
                f"the {to} export gives shape {tuple(got.shape)} for input {tuple(x.shape)}, "
                f"the original {tuple(ref.shape)}; its sizes are not dynamic"
            )
        diff = float((got.float() - ref.float()).abs().max())
        scale = max(1.0, float(ref.abs().max()))
        if not diff <= atol * scale:
            raise ModelError(
                f"the {to} export differs from the original by {diff:.3g} on input "
                f"{tuple(x.shape)} (allowed {atol * scale:.3g}); not written"
            )
        worst = max(worst, diff)
    return worst


def _export_meta(
    meta: ModelMeta, to: str, loaded: LoadedModel, method: str, diff: float
) -> ModelMeta:
    provenance = dict(meta.provenance)
    provenance["export"] = {
        "source_arch": meta.arch,
        "source_sha256": loaded.sha256,
        "source_file": loaded.path.name if loaded.path is not None else None,
        "method": method,
        "max_abs_diff": diff,
        "torch": torch.__version__,
        "opset": ONNX_OPSET if to == "onnx" else None,
    }
    return meta.model_copy(update={"arch": to, "provenance": provenance})


def _default_out(loaded: LoadedModel, to: str) -> Path:
    suffix = ".onnx" if to == "onnx" else ".ts"
    if loaded.path is None:
        raise ModelError("exporting an in-memory model needs an output path")
    return Path(loaded.path).with_suffix(suffix)
