from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from segflow.errors import ModelError
from segflow.models import LoadedModel, export_model, list_models, load_model
from segflow.models.export import MatrixAdaptiveAvgPool
from segflow.models.exported import read_sidecar

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

# one of each kind: smp decoder, trace fallback (UnetPlusPlus does not script), adaptive
# pooling (PSPNet), dilated encoder (DeepLabV3+), FCN, paper U-Net 2-D and 3-D
FAST = ["unet", "unetplusplus", "pspnet", "deeplabv3plus", "fcn8s", "unet2d", "unet3d"]
SLOW = [a for a in list_models() if a not in FAST]
ARCHS = [*FAST, *(pytest.param(a, marks=pytest.mark.slow) for a in SLOW)]


def _odd_input(loaded: LoadedModel, batch: int = 3) -> torch.Tensor:
    meta = loaded.meta
    gen = torch.Generator().manual_seed(11)
    sizes = [meta.output_stride * (3 - i) for i in range(meta.spatial_dims)]
    return torch.randn(batch, meta.in_channels, *sizes, generator=gen)


@pytest.mark.parametrize("to", ["torchscript", "onnx"])
@pytest.mark.parametrize("arch", ARCHS)
def test_export_round_trip(
    arch: str, to: Any, tiny_file: Callable[[str], Path], tmp_path: Path
) -> None:
    src = tiny_file(arch)
    out = tmp_path / ("model.onnx" if to == "onnx" else "model.ts")
    result = export_model(src, to, out)
    assert result.path == out and out.is_file() and result.sidecar.is_file()
    assert result.max_abs_diff <= 1e-4
    assert result.checked_shapes[0][0] == 1 and result.checked_shapes[1][0] == 2
    native = load_model(src)
    exported = load_model(out)
    assert exported.runtime == to and exported.sha256 == result.sha256
    assert exported.meta.num_classes == native.meta.num_classes
    assert exported.meta.output_stride == native.meta.output_stride
    # a batch and spatial size the export never saw
    x = _odd_input(native)
    with torch.no_grad():
        ref = native.module(x)
        got = exported.module(x)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max()))
    assert float((got.argmax(1) == ref.argmax(1)).float().mean()) >= 0.9999


def test_sidecar_records_the_export(tiny_file: Callable[[str], Path], tmp_path: Path) -> None:
    src = tiny_file("fcn8s")
    result = export_model(src, "onnx", tmp_path / "fcn.onnx", sidecar_format="json")
    assert result.sidecar == tmp_path / "fcn.onnx.json"
    meta = read_sidecar(result.sidecar)
    native = load_model(src).meta
    assert meta.arch == "onnx"
    assert meta.model_dump(exclude={"arch", "provenance"}) == native.model_dump(
        exclude={"arch", "provenance"}
    )
    export = meta.provenance["export"]
    assert export["source_arch"] == "fcn8s" and export["source_sha256"] == load_model(src).sha256
    assert export["opset"] == 17


def test_default_output_name_and_no_overwrite(
    tiny_file: Callable[[str], Path], tmp_path: Path
) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(tiny_file("unet2d").read_bytes())
    result = export_model(src, "torchscript")
    assert result.path == tmp_path / "m.ts" and result.method == "script"
    with pytest.raises(ModelError, match="overwrite its source"):
        export_model(src, "onnx", src)
    with pytest.raises(ModelError, match="torchscript' or 'onnx"):
        export_model(src, "tflite", tmp_path / "x")  # type: ignore[arg-type]


class ShapeBaked(nn.Module):
    """Not scriptable (varargs) and its output depends on the size through a Python int."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor, *extra: Any) -> torch.Tensor:
        width = int(x.shape[-1])  # frozen into a constant by tracing
        return self.conv(x) * float(width)


def test_export_that_is_not_dynamic_is_refused(
    tiny_file: Callable[[str], Path], tmp_path: Path
) -> None:
    meta = load_model(tiny_file("pixel")).meta.model_copy(
        update={"in_channels": 1, "output_stride": 8}
    )
    meta = meta.model_copy(update={"classes": meta.classes[:2]})
    loaded = LoadedModel(meta, ShapeBaked().eval(), "x", None, "torch")
    out = tmp_path / "baked.ts"
    with pytest.raises(ModelError, match="torchscript export differs") as info:
        export_model(loaded, "torchscript", out)
    assert "\n" not in str(info.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_exports_of_exports_are_refused(tiny_file: Callable[[str], Path], tmp_path: Path) -> None:
    ts = export_model(tiny_file("unet2d"), "torchscript", tmp_path / "a.ts").path
    with pytest.raises(ModelError, match="only native models"):
        export_model(ts, "onnx", tmp_path / "b.onnx")


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (6, 6), (13, 4)])
@pytest.mark.parametrize("in_size", [(6, 6), (17, 23), (5, 9)])
def test_matrix_adaptive_pool_matches_torch(
    size: tuple[int, int], in_size: tuple[int, int]
) -> None:
    x = torch.randn(2, 3, *in_size)
    ref = nn.AdaptiveAvgPool2d(size)(x)
    torch.testing.assert_close(MatrixAdaptiveAvgPool(size, 2)(x), ref, atol=1e-6, rtol=1e-5)


def test_matrix_adaptive_pool_3d() -> None:
    x = torch.randn(1, 2, 7, 9, 5)
    ref = nn.AdaptiveAvgPool3d((2, 3, 1))(x)
    torch.testing.assert_close(MatrixAdaptiveAvgPool((2, 3, 1), 3)(x), ref, atol=1e-6, rtol=1e-5)


def test_onnx_export_is_deterministic(tiny_file: Callable[[str], Path], tmp_path: Path) -> None:
    first = export_model(tiny_file("unet2d"), "onnx", tmp_path / "a.onnx")
    second = export_model(tiny_file("unet2d"), "onnx", tmp_path / "b.onnx")
    assert first.sha256 == second.sha256
