from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from segflow.models import LoadedModel, ModelMeta, export_model, list_models, load_model, model_info
from segflow.models.info import count_flops, count_parameters, format_info, receptive_field
from segflow.models.meta import ClassInfo


@pytest.mark.parametrize("arch", list_models())
def test_parameter_count_matches_the_module(arch: str, tiny_file: Callable[[str], Path]) -> None:
    loaded = load_model(tiny_file(arch))
    info = model_info(loaded, flops=False, receptive=False)
    assert info.parameters == sum(p.numel() for p in loaded.module.parameters())
    assert info.output_stride == loaded.meta.output_stride
    assert info.patch_size[0] % info.output_stride == 0


def test_flops_of_a_convolution() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # one multiply-add (2 FLOPs) per weight per output pixel
    assert count_flops(conv, (1, 3, 16, 16)) == 2 * 8 * 3 * 9 * 16 * 16
    assert count_parameters(conv) == 8 * 3 * 9 + 8


def test_receptive_field_of_a_conv_stack() -> None:
    stack = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 5, padding=2))
    extent, whole = receptive_field(stack, (1, 1, 32, 32))
    assert extent == (7, 7) and not whole
    pooled = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    extent, whole = receptive_field(
        nn.Sequential(pooled, nn.Upsample(size=(16, 16))), (1, 1, 16, 16)
    )
    assert extent == (16, 16) and whole


def test_info_of_a_model_file(tiny_file: Callable[[str], Path]) -> None:
    info = model_info(tiny_file("unet2d"), patch_size=(64, 64))
    assert info.runtime == "torch" and info.patch_size == (64, 64)
    assert info.flops_per_patch is not None and info.flops_per_patch > 0
    assert info.receptive_field is not None and not info.global_context
    # depth-2 U-Net: at least the 3x3 conv pairs around the bottleneck, less than the patch
    assert 20 <= info.receptive_field[0] < 64
    # FLOPs grow with the patch area
    bigger = model_info(tiny_file("unet2d"), patch_size=(128, 128), receptive=False)
    assert bigger.flops_per_patch == 4 * info.flops_per_patch
    rows = dict(format_info(info))
    assert rows["parameters"] == f"{info.parameters:,}"
    assert rows["output stride"] == "4"
    assert rows["architecture"] == "unet2d"


def test_global_context_is_reported(tiny_file: Callable[[str], Path]) -> None:
    info = model_info(tiny_file("pspnet"), patch_size=(64, 64), flops=False)
    assert info.global_context  # the pyramid pooling sees the whole patch


def test_info_of_a_3d_model(tiny_file: Callable[[str], Path]) -> None:
    info = model_info(tiny_file("unet3d"), receptive=False)
    assert info.patch_size == (64, 64, 64)
    info = model_info(tiny_file("unet3d"), patch_size=(32, 32, 32), flops=False)
    assert info.receptive_field is not None and len(info.receptive_field) == 3


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_info_of_exports(tiny_file: Callable[[str], Path], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    native = model_info(tiny_file("unet2d"), patch_size=(32, 32))
    ts = export_model(tiny_file("unet2d"), "torchscript", tmp_path / "m.ts").path
    info = model_info(ts, patch_size=(32, 32))
    assert info.runtime == "torchscript"
    assert info.parameters == native.parameters
    assert info.flops_per_patch == native.flops_per_patch
    onnx = export_model(tiny_file("unet2d"), "onnx", tmp_path / "m.onnx").path
    info = model_info(onnx)
    assert info.runtime == "onnx" and info.flops_per_patch is None
    assert info.parameters is not None and info.parameters > 0
    assert dict(format_info(info))["FLOPs per patch"] == "n/a"


def test_default_patch_uses_the_hint() -> None:
    meta = ModelMeta(
        arch="pixel",
        in_channels=1,
        classes=(ClassInfo(name="a"),),
        patch_size=(40, 40),
        output_stride=16,
    )
    loaded = LoadedModel(meta, nn.Conv2d(1, 1, 1), "x", None, "torch")
    info = model_info(loaded, receptive=False)
    assert info.patch_size == (48, 48)  # rounded up to the output stride
    assert info.flops_per_patch == 2 * 48 * 48
    with torch.no_grad():
        assert loaded.module(torch.zeros(1, 1, 4, 4)).shape == (1, 1, 4, 4)
