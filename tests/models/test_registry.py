from __future__ import annotations

from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F

from segflow.errors import ConfigError, ModelError
from segflow.models import (
    ModelMeta,
    build_model,
    create_model,
    default_arch,
    list_models,
    new_model,
    output_stride_of,
)
from segflow.models.meta import ClassInfo
from segflow.models.registry import canonical_arch_kwargs
from tests.models.tiny import ENCODER, tiny_in_channels, tiny_kwargs, tiny_model

SMP_ARCHS = [
    "unet",
    "unetplusplus",
    "fpn",
    "pspnet",
    "deeplabv3",
    "deeplabv3plus",
    "linknet",
    "manet",
    "pan",
    "upernet",
    "segformer",
]


def test_registry_lists_every_family() -> None:
    names = list_models()
    assert set(SMP_ARCHS) <= set(names)
    assert {"fcn32s", "fcn16s", "fcn8s", "unet2d", "unet3d"} <= set(names)
    assert len(names) == len(set(names))
    assert default_arch(3) == "unet3d"
    assert default_arch(2) in names


@pytest.mark.parametrize("arch", list_models())
def test_builds_and_predicts_odd_sizes_padded_to_stride(arch: str) -> None:
    torch.manual_seed(0)
    module, meta = tiny_model(arch, classes=4)
    stride = meta.output_stride
    assert stride == output_stride_of(module)
    assert stride & (stride - 1) == 0  # a power of two
    odd = (37, 45, 29)[: meta.spatial_dims]
    x = torch.randn(2, meta.in_channels, *odd)
    padded = F.pad(x, [p for s in reversed(odd) for p in (0, (-s) % stride)])
    assert all(s % stride == 0 for s in padded.shape[2:])
    with torch.no_grad():
        out = module.eval()(padded)
    assert out.shape == (2, 4, *padded.shape[2:])
    assert torch.isfinite(out).all()
    # a larger, non-square multiple of the stride works as well
    bigger = tuple(stride * (1 + i) for i in range(meta.spatial_dims))
    with torch.no_grad():
        out = module(torch.randn(1, meta.in_channels, *bigger))
    assert out.shape == (1, 4, *bigger)


@pytest.mark.parametrize("arch", list_models())
def test_build_model_rebuilds_the_same_architecture(arch: str) -> None:
    module, meta = tiny_model(arch)
    rebuilt = build_model(ModelMeta.model_validate_json(meta.model_dump_json()))
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert ours == theirs
    assert output_stride_of(rebuilt) == meta.output_stride


@pytest.mark.parametrize("arch", ["unet", "fcn8s", "deeplabv3plus"])
def test_other_channel_counts(arch: str) -> None:
    module = create_model(arch, in_channels=6, classes=5, **tiny_kwargs(arch))
    stride = output_stride_of(module)
    assert stride is not None
    with torch.no_grad():
        out = module.eval()(torch.randn(1, 6, 2 * stride, stride))
    assert out.shape == (1, 5, 2 * stride, stride)


def test_output_strides_per_architecture() -> None:
    def stride(arch: str, **kw: object) -> int:
        kwargs = {**tiny_kwargs(arch), **kw}
        value = output_stride_of(create_model(arch, in_channels=tiny_in_channels(arch), **kwargs))
        assert value is not None
        return value

    assert stride("unet") == 32
    assert stride("unet", encoder_depth=4, decoder_channels=[16, 8, 8, 8]) == 16
    assert stride("fcn8s") == 32
    assert stride("pspnet") == 8  # smp PSPNet uses the stride-8 features
    assert stride("deeplabv3") == 8
    assert stride("deeplabv3", output_stride=16) == 16
    assert stride("deeplabv3plus") == 16
    assert stride("deeplabv3plus", output_stride=8) == 8
    # PAN's pyramid attention pools the stride-16 features three more times
    assert stride("pan") == 128
    assert stride("unet2d", depth=3) == 8
    assert stride("unet3d", depth=2) == 4
    assert stride("pixel") == 1


def test_deeplab_exposes_output_stride_and_atrous_rates() -> None:
    kwargs = canonical_arch_kwargs("deeplabv3", ENCODER, output_stride=16, atrous_rates=[6, 12, 18])
    assert kwargs == {
        "encoder": ENCODER,
        "encoder_output_stride": 16,
        "decoder_atrous_rates": [6, 12, 18],
    }
    module: Any = create_model(
        "deeplabv3",
        encoder=ENCODER,
        decoder_channels=16,
        output_stride=16,
        atrous_rates=[6, 12, 18],
    )
    dilations = {
        m.dilation[0]
        for m in module.decoder.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    }
    assert {6, 12, 18} <= dilations
    assert output_stride_of(module) == 16


def test_unknown_architecture_suggests_a_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'unet'"):
        create_model("unte")


def test_unknown_encoder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'resnet18'") as info:
        create_model("unet", encoder="resnt18")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="tu-no_such_model"):
        create_model("unet", encoder="tu-no_such_model")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoder_weights": "imagenet"}, "never downloads"),
        ({"activation": "softmax"}, "logits"),
        ({"aux_params": {"classes": 2}}, "logits only"),
        ({"encoder_name": "resnet18"}, "encoder="),
    ],
)
def test_refused_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model("unet", encoder=ENCODER, **kwargs)


def test_spatial_dims_must_fit_the_architecture() -> None:
    with pytest.raises(ConfigError, match="unet3d"):
        create_model("unet2d", spatial_dims=3)
    meta = ModelMeta(arch="unet", spatial_dims=3, in_channels=1, classes=(ClassInfo(name="a"),))
    with pytest.raises(ModelError, match="spatial_dims=3"):
        build_model(meta)


def test_build_model_rejects_unknown_and_exported_archs() -> None:
    classes = (ClassInfo(name="a"),)
    with pytest.raises(ModelError, match="unknown architecture"):
        build_model(ModelMeta(arch="nope", in_channels=1, classes=classes))
    with pytest.raises(ModelError, match="load_model"):
        build_model(ModelMeta(arch="onnx", in_channels=1, classes=classes))
    bad = ModelMeta(arch="unet2d", in_channels=1, classes=classes, arch_kwargs={"depth": "x"})
    with pytest.raises(ModelError, match="cannot build unet2d"):
        build_model(bad)


def test_new_model_metadata() -> None:
    module, meta = new_model(
        "unet2d",
        in_channels=2,
        classes=["water", "land"],
        band_names=["vv", "vh"],
        patch_size=(64, 64),
        depth=2,
        base_channels=4,
    )
    assert [c.name for c in meta.classes] == ["water", "land"]
    assert meta.classes[0].color != meta.classes[1].color
    assert meta.arch_kwargs == {"depth": 2, "base_channels": 4, "norm": "batch"}
    assert meta.output_stride == 4 and meta.spatial_dims == 2
    assert meta.band_names == ("vv", "vh")
    assert "torch" in meta.provenance["created_with"]
    assert cast(Any, module).head.out_channels == 2
    with pytest.raises(ConfigError, match="multiple of"):
        new_model("unet2d", in_channels=1, patch_size=(30, 30), depth=2, base_channels=4)
    with pytest.raises(ConfigError, match="band_names"):
        new_model("unet2d", in_channels=1, band_names=["a", "b"], depth=1, base_channels=2)


def test_arguments_must_be_json() -> None:
    with pytest.raises(ConfigError, match="JSON"):
        canonical_arch_kwargs("unet", ENCODER, decoder_channels={1, 2})


def test_spatial_dims_argument_is_checked_for_every_family() -> None:
    module = create_model("unet", spatial_dims=2, **tiny_kwargs("unet"))
    assert output_stride_of(module) == 32
    with pytest.raises(ConfigError, match="use 'unet3d'"):
        create_model("fcn8s", spatial_dims=3, **tiny_kwargs("fcn8s"))
    pixel = create_model("pixel", in_channels=2, spatial_dims=3)
    with torch.no_grad():
        assert pixel(torch.zeros(1, 2, 3, 4, 5)).shape == (1, 2, 3, 4, 5)
