"""segflow model files: one ``.safetensors`` file, weights plus JSON metadata.

The metadata (:class:`ModelMeta`) is stored as JSON under the
``segflow_meta`` key of the safetensors header, so a model is one file and
reading it never unpickles anything. :func:`load_model` also opens models
from elsewhere (legacy ``.pt`` state dicts, TorchScript, ONNX), each next to
a metadata sidecar, and returns them all as a :class:`LoadedModel`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from segflow.errors import ModelError
from segflow.io.files import sha256_file
from segflow.models import legacy
from segflow.models.exported import (
    OnnxModule,
    load_torchscript,
)
from segflow.models.header import META_KEY, safetensors_meta, sidecar_meta
from segflow.models.messages import first_line
from segflow.models.meta import ModelMeta
from segflow.models.registry import build_model, output_stride_of

__all__ = [
    "META_KEY",
    "LoadedModel",
    "check_state_dict",
    "detect_format",
    "load_model",
    "read_meta",
    "save_model",
    "sha256_file",
]

Runtime = Literal["torch", "torchscript", "onnx"]


@dataclass
class LoadedModel:
    """A model ready for the predictor.

    ``module`` is in eval mode; it takes ``(N, C, *spatial)`` float32 whose
    spatial sizes are multiples of ``meta.output_stride`` and returns
    ``(N, K, *spatial)`` logits with ``K = meta.num_classes``.
    """

    meta: ModelMeta
    module: nn.Module
    sha256: str  # of the model file
    path: Path | None
    runtime: Literal["torch", "torchscript", "onnx"]


def save_model(module: nn.Module, meta: ModelMeta, path: str | Path) -> str:
    """Write weights + metadata to one safetensors file (atomically); return its sha256.

    The weights are checked against the architecture ``meta`` describes, so
    a file that saves always loads.
    """
    path = Path(path)
    if meta.arch in ("torchscript", "onnx"):
        raise ModelError(f"save_model writes native models; arch '{meta.arch}' is an export")
    required = output_stride_of(module)
    if required is not None and meta.output_stride % required:
        raise ModelError(
            f"meta.output_stride={meta.output_stride} is not a multiple of the {required} "
            f"this {meta.arch} model needs; set output_stride={required} (or a multiple)"
        )
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    check_state_dict(
        _reference_state(meta), state, f"{meta.arch} ({_arch_summary(meta)})", "module"
    )
    metadata = {META_KEY: meta.model_dump_json(), "format": "pt"}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; a model is shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sha256_file(path)


def read_meta(path: str | Path) -> ModelMeta:
    """The metadata of any model file (header or sidecar only; weights are not read)."""
    path = _existing(path)
    kind = detect_format(path)
    if kind == "safetensors":
        return _safetensors_meta(path)
    return _sidecar_meta(path, None)


def load_model(path: str | Path, *, sidecar: str | Path | None = None) -> LoadedModel:
    """Open a model file: segflow ``.safetensors``, or ``.pt``/``.ts``/``.onnx`` with a sidecar.

    Nothing is unpickled: safetensors needs no pickle, a legacy ``.pt`` state
    dict is read with ``torch.load(weights_only=True)``, and TorchScript uses
    its own restricted loader.
    """
    path = _existing(path)
    kind = detect_format(path)
    digest = sha256_file(path)
    if kind == "safetensors":
        meta = _safetensors_meta(path)
        module = _built_with_weights(meta, _safetensors_weights(path), path)
        return LoadedModel(meta, module.eval(), digest, path, "torch")
    meta = _sidecar_meta(path, sidecar)
    if kind == "onnx":
        onnx = OnnxModule(path, spatial_dims=meta.spatial_dims)
        return LoadedModel(meta, probe(onnx, meta, path), digest, path, "onnx")
    if kind == "torchscript":
        scripted = load_torchscript(path)
        return LoadedModel(meta, probe(scripted, meta, path), digest, path, "torchscript")
    state = legacy.read_state_dict(path)
    module = _built_with_weights(meta, state, path)
    return LoadedModel(meta, module.eval(), digest, path, "torch")


def probe(module: Any, meta: ModelMeta, path: Path) -> Any:
    """``module`` once it has taken one small patch as its sidecar describes it.

    An exported module's metadata comes from a sidecar that can disagree with it
    (in_channels, spatial_dims, classes); a mismatch would otherwise surface inside
    the first forward of a run, after its store was created.
    """
    side = 2 * meta.output_stride
    patch = torch.zeros((1, meta.in_channels, *(side,) * meta.spatial_dims))
    try:
        with torch.inference_mode():
            out = module(patch)
    except Exception as exc:  # the module's own error, from inside its forward
        raise ModelError(
            f"{path.name} does not take a {meta.spatial_dims}-D patch of {meta.in_channels} "
            f"channel(s) as its sidecar says ({first_line(exc)}); fix in_channels / spatial_dims"
        ) from None
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != meta.spatial_dims + 2 or shape[1] != meta.num_classes:
        raise ModelError(
            f"{path.name} returns shape {shape} for one patch, but its sidecar declares "
            f"{meta.num_classes} classes in {meta.spatial_dims}-D; fix the sidecar's classes"
        )
    return module


def detect_format(path: Path) -> Literal["safetensors", "onnx", "torchscript", "pickle"]:
    """What a model file is, from its content first and its suffix second."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and path.suffix != ".onnx":
        return "safetensors"
    if path.suffix == ".safetensors":
        return "safetensors"  # damaged header: reading it reports the problem
    if path.suffix == ".onnx":
        return "onnx"
    if head[:2] == b"PK":
        return "torchscript" if legacy.is_torchscript_archive(path) else "pickle"
    if path.suffix in (".ts", ".torchscript"):
        return "torchscript"
    if head[:1] == b"\x80" or path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return "pickle"
    raise ModelError(
        f"{path.name}: unknown model file type; expected .safetensors (segflow), .pt/.pth "
        "(state dict or TorchScript) or .onnx"
    )


def check_state_dict(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str, where: str
) -> None:
    """One-line ModelError when weights do not fit the architecture."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        (k, tuple(found[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
    if shapes:
        k, got, want = shapes[0]
        parts.append(f"{len(shapes)} with other shapes (e.g. '{k}' {where} {got} vs model {want})")
    raise ModelError(
        f"weights in {where} do not match architecture {what}: {', '.join(parts)}; "
        "the weights come from a different architecture or arguments"
    )


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    return path


def _safetensors_meta(path: Path) -> ModelMeta:
    meta = safetensors_meta(path)  # header checked and parsed without safetensors' reader
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(
            f"{path.name}: not a readable safetensors file, truncated or corrupt ({exc})"
        ) from None
    return meta


def _safetensors_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path.name}: cannot read weights, file is corrupt ({exc})") from None


def _sidecar_meta(path: Path, sidecar: str | Path | None) -> ModelMeta:
    return sidecar_meta(path, sidecar)


def _built_with_weights(meta: ModelMeta, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    module = build_model(meta)
    check_state_dict(module.state_dict(), state, f"{meta.arch} ({_arch_summary(meta)})", path.name)
    module.load_state_dict(state, strict=True)
    return module


def _reference_state(meta: ModelMeta) -> dict[str, torch.Tensor]:
    """The architecture's state dict, built without allocating weights where possible."""
    try:
        with torch.device("meta"):
            return dict(build_model(meta).state_dict())
    except Exception:  # some constructors cannot run on the meta device: build for real
        return dict(build_model(meta).state_dict())


def _arch_summary(meta: ModelMeta) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in meta.arch_kwargs.items())
    return f"{kw}, in_channels={meta.in_channels}, classes={meta.num_classes}"
