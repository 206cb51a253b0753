"""Models from elsewhere: TorchScript and ONNX files with a metadata sidecar.

A sidecar is a small YAML or JSON file holding the same :class:`ModelMeta` a
segflow model file carries. For ``model.onnx`` segflow looks for
``model.onnx.yaml`` (also ``.yml``/``.json``), then ``model.yaml``/``model.json``.

:class:`OnnxModule` wraps an onnxruntime session as a ``torch.nn.Module``:
tensors in, tensors out, and ``.to(device)`` chooses the CUDA or CPU
execution provider, so the predictor treats it like any other module.
onnxruntime is an optional extra, imported only when an ONNX model is used.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from torch import nn

from segflow.errors import ModelError
from segflow.models.header import (  # noqa: F401  (their home before the torch-free header)
    SIDECAR_SUFFIXES,
    find_sidecar,
    parse_meta,
    read_sidecar,
    sidecar_candidates,
)
from segflow.models.messages import first_line
from segflow.models.meta import ModelMeta

# torch.jit.load has no annotations; typed once here rather than ignored at each use
_jit_load = cast(Callable[..., torch.jit.ScriptModule], torch.jit.load)


def default_sidecar_path(model_path: Path, fmt: str = "yaml") -> Path:
    suffix = {"yaml": ".yaml", "yml": ".yml", "json": ".json"}.get(fmt)
    if suffix is None:
        raise ModelError(f"sidecar format must be yaml or json, got {fmt!r}")
    return Path(model_path).with_name(Path(model_path).name + suffix)


def write_sidecar(meta: ModelMeta, path: Path) -> Path:
    path = Path(path)
    data = meta.model_dump(mode="json")
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            module = _jit_load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelError(
            f"cannot load TorchScript file {Path(path).name}: {first_line(exc)}"
        ) from None
    return module.eval()


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(
            "running ONNX models needs onnxruntime: pip install 'segflow[onnx]'"
        ) from None
    return onnxruntime


class OnnxModule(nn.Module):
    """An ONNX model as a module: ``(N, C, *spatial)`` float32 in, logits out, on ``x.device``."""

    def __init__(self, path: str | Path, *, spatial_dims: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.device = torch.device("cpu")
        self._session: Any = None
        session = self._create_session()
        inputs = session.get_inputs()
        if len(inputs) != 1 or not session.get_outputs():
            raise ModelError(
                f"{self.path.name}: an ONNX segmentation model needs one input and at least one "
                f"output, this one has {len(inputs)} inputs"
            )
        self.input_name: str = inputs[0].name
        self.output_name: str = session.get_outputs()[0].name
        rank = len(inputs[0].shape or ())
        if spatial_dims is not None and rank and rank != spatial_dims + 2:
            raise ModelError(
                f"{self.path.name}: ONNX input has rank {rank} but the metadata says "
                f"spatial_dims={spatial_dims} (expected rank {spatial_dims + 2})"
            )

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session is not None else []

    def _create_session(self) -> Any:
        ort = import_onnxruntime()
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = self.device.index if self.device.index is not None else 0
                providers = [
                    ("CUDAExecutionProvider", {"device_id": index}),
                    "CPUExecutionProvider",
                ]
            else:
                warnings.warn(
                    "onnxruntime has no CUDA provider here (install onnxruntime-gpu); "
                    "running the ONNX model on the CPU",
                    RuntimeWarning,
                    stacklevel=3,
                )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load ONNX file {self.path.name}: {first_line(exc)}") from None
        return self._session

    def to(self, *args: Any, **kwargs: Any) -> OnnxModule:
        device = _parse_device(*args, **kwargs)
        if device is not None and device != self.device:
            self.device = device
            self._create_session()
        return self

    def cpu(self) -> OnnxModule:
        return self.to("cpu")

    def cuda(self, device: int | torch.device | None = None) -> OnnxModule:
        if isinstance(device, torch.device):
            return self.to(device)
        return self.to(torch.device("cuda", device) if device is not None else "cuda")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self._session if self._session is not None else self._create_session()
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = session.run([self.output_name], {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)

    def __getstate__(self) -> dict[str, Any]:
        # sessions cannot be pickled (Dask ships modules to workers): rebuild lazily there
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def extra_repr(self) -> str:
        return f"path={self.path.name!r}, providers={self.providers}"


def onnx_parameter_count(path: Path) -> int | None:
    """Number of weight values stored in an ONNX file (None without the onnx package)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    return int(sum(numpy_helper.to_array(t).size for t in model.graph.initializer))


def _parse_device(*args: Any, **kwargs: Any) -> torch.device | None:
    candidates = [*args, kwargs.get("device")]
    for value in candidates:
        if isinstance(value, torch.device):
            return value
        if isinstance(value, str):
            try:
                return torch.device(value)
            except RuntimeError:
                continue
        if isinstance(value, int) and not isinstance(value, bool):
            return torch.device("cuda", value)
        if isinstance(value, torch.Tensor):
            return value.device
    return None
