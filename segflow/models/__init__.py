"""Models: the architecture registry, model files, exports and transfer learning.

The engine needs only :func:`load_model`: it returns a :class:`LoadedModel`
whatever the file (segflow ``.safetensors``, legacy ``.pt`` state dict,
TorchScript, ONNX) and never unpickles anything.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segflow.models.archs import DEFAULT_VOLUME_ARCH, arch_spec, default_arch, list_models
    from segflow.models.export import ExportResult, export_model
    from segflow.models.files import LoadedModel, load_model, read_meta, save_model, sha256_file
    from segflow.models.info import ModelInfo, count_parameters, model_info
    from segflow.models.meta import ClassInfo, ModelMeta, Normalization
    from segflow.models.registry import build_model, create_model, new_model, output_stride_of
    from segflow.models.transfer import TransferReport, load_encoder_weights

__all__ = [
    "DEFAULT_VOLUME_ARCH",
    "ClassInfo",
    "ExportResult",
    "LoadedModel",
    "ModelInfo",
    "ModelMeta",
    "Normalization",
    "TransferReport",
    "arch_spec",
    "build_model",
    "count_parameters",
    "create_model",
    "default_arch",
    "export_model",
    "list_models",
    "load_encoder_weights",
    "load_model",
    "model_info",
    "new_model",
    "output_stride_of",
    "read_meta",
    "save_model",
    "sha256_file",
]

# torch and the architectures load on first use: `segflow inspect`, `segflow model list` or
# reading model metadata should not pay for them
_HOMES = {
    "ExportResult": "export",
    "export_model": "export",
    "LoadedModel": "files",
    "load_model": "files",
    "read_meta": "files",
    "save_model": "files",
    "sha256_file": "files",
    "ModelInfo": "info",
    "count_parameters": "info",
    "model_info": "info",
    "ClassInfo": "meta",
    "ModelMeta": "meta",
    "Normalization": "meta",
    "DEFAULT_VOLUME_ARCH": "archs",
    "arch_spec": "archs",
    "default_arch": "archs",
    "list_models": "archs",
    "build_model": "registry",
    "create_model": "registry",
    "new_model": "registry",
    "output_stride_of": "registry",
    "TransferReport": "transfer",
    "load_encoder_weights": "transfer",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'segflow.models' has no attribute {name!r}")
    value = getattr(import_module(f"segflow.models.{home}"), name)
    globals()[name] = value
    return value
