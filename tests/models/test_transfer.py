from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from segflow.errors import ConfigError, ModelError
from segflow.models import create_model, load_encoder_weights
from segflow.models.transfer import adapt_first_conv, read_weights
from tests.models.tiny import ENCODER


@pytest.fixture(scope="module")
def torchvision_resnet18(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_resnet18_into_smp_encoder(
    torchvision_resnet18: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, state = torchvision_resnet18
    model: Any = create_model("unet", encoder="resnet18", classes=2)
    report = load_encoder_weights(model, path)
    assert set(report.unexpected) == {"fc.weight", "fc.bias"}  # the classifier head
    assert report.missing == () and report.mismatched == () and report.adapted == ()
    assert len(report.matched) == len(model.encoder.state_dict())
    torch.testing.assert_close(model.encoder.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(model.encoder.bn1.running_var, state["bn1.running_var"])
    assert "matched" in report.summary()


@pytest.mark.parametrize("in_channels", [1, 6])
def test_first_conv_adapted_for_other_band_counts(
    torchvision_resnet18: tuple[Path, dict[str, torch.Tensor]], in_channels: int
) -> None:
    path, state = torchvision_resnet18
    model: Any = create_model("fcn8s", encoder="resnet18", in_channels=in_channels, head_channels=8)
    report = load_encoder_weights(model, path)
    assert report.adapted == ("conv1.weight",)
    assert "conv1.weight" in report.matched and report.mismatched == ()
    rgb = state["conv1.weight"]
    got = model.encoder.conv1.weight
    assert got.shape == (64, in_channels, 7, 7)
    if in_channels == 1:
        torch.testing.assert_close(got, rgb.sum(dim=1, keepdim=True))
    else:  # 6 bands: R G B R G B, scaled by 3/6 so activations keep their size
        torch.testing.assert_close(got, torch.cat([rgb, rgb], dim=1) * 0.5)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, in_channels, 64, 64))
    assert out.shape == (1, 2, 64, 64)


def test_adapt_first_conv_rule() -> None:
    w = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(adapt_first_conv(w, 3), w)
    torch.testing.assert_close(adapt_first_conv(w, 1), w.sum(1, keepdim=True))
    four = adapt_first_conv(w, 4)
    torch.testing.assert_close(four[:, 3], w[:, 0] * 0.75)


def test_timm_state_dict_into_tu_encoder(tmp_path: Path) -> None:
    torch.manual_seed(2)
    timm_model = timm.create_model("test_resnet", pretrained=False)
    state = {k: v.contiguous() for k, v in timm_model.state_dict().items()}
    path = tmp_path / "test_resnet.safetensors"
    save_file(state, str(path))
    model: Any = create_model("unet", encoder=ENCODER, decoder_channels=[16, 16, 8, 8, 8])
    report = load_encoder_weights(model, path, strict=True)
    assert report.missing == () and len(report.matched) == len(model.encoder.state_dict())
    assert all(k.startswith(("fc.", "head")) for k in report.unexpected)
    torch.testing.assert_close(model.encoder.model.conv1[0].weight, state["conv1.0.weight"])


def test_smp_model_state_dict_into_another_decoder(tmp_path: Path) -> None:
    torch.manual_seed(3)
    donor: Any = create_model(
        "fpn", encoder=ENCODER, decoder_pyramid_channels=32, decoder_segmentation_channels=32
    )
    path = tmp_path / "donor.pt"
    torch.save({"model": {f"module.{k}": v for k, v in donor.state_dict().items()}}, path)
    model: Any = create_model("deeplabv3plus", encoder=ENCODER, decoder_channels=16, classes=4)
    report = load_encoder_weights(model, path)
    assert report.missing == () and report.mismatched == ()
    # the DataParallel "module." prefix is dropped when reading
    assert all(k.startswith(("decoder.", "segmentation_head.")) for k in report.unexpected)
    for (name, a), b in zip(
        model.encoder.state_dict().items(), donor.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_other_backbone_is_reported_and_strict_refuses(
    torchvision_resnet18: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, _ = torchvision_resnet18
    model: Any = create_model("linknet", encoder="resnet34")  # more blocks than resnet18
    report = load_encoder_weights(model, path)
    assert report.matched and report.missing  # layer*.2+ blocks are not in resnet18
    assert any(k.startswith("layer3.5") for k in report.missing)
    before = model.encoder.layer3[5].conv1.weight.clone()
    assert torch.equal(model.encoder.layer3[5].conv1.weight, before)
    with pytest.raises(ModelError, match="incomplete"):
        load_encoder_weights(model, path, strict=True)


def test_mismatched_shapes_are_not_loaded(tmp_path: Path) -> None:
    model: Any = create_model("unet", encoder="resnet18")
    state = dict(model.encoder.state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    report = load_encoder_weights(model, path)
    assert report.mismatched == (("layer1.0.conv1.weight", (64, 64, 5, 5), (64, 64, 3, 3)),)
    assert model.encoder.layer1[0].conv1.weight.abs().sum() > 0


def test_unrelated_file_and_models_without_encoder(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(path))
    model: Any = create_model("unet", encoder=ENCODER, decoder_channels=[16, 16, 8, 8, 8])
    with pytest.raises(ModelError, match="no encoder weight"):
        load_encoder_weights(model, path)
    with pytest.raises(ConfigError, match=r"no \.encoder"):
        load_encoder_weights(create_model("unet2d", depth=1, base_channels=2), path)
    with pytest.raises(ModelError, match="not found"):
        read_weights(tmp_path / "missing.pth")


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_malicious_weights_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, path)
    model: Any = create_model("unet", encoder=ENCODER, decoder_channels=[16, 16, 8, 8, 8])
    with pytest.raises(ModelError, match="refusing"):
        load_encoder_weights(model, path)
    assert not marker.exists()
