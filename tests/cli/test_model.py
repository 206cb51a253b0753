from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from segflow.cli.model import model_app
from segflow.models import list_models, load_model

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ok(*args: str) -> str:
    result = runner.invoke(model_app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_list() -> None:
    out = _ok("list")
    for arch in list_models():
        assert f"\n{arch} " in out
    assert "resnet18" in _ok("list", "--encoders")


def test_create_the_documented_example(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    out = _ok(
        "create",
        "unet",
        "--encoder",
        "resnet18",
        "--in-channels",
        "3",
        "--classes",
        "6",
        "-o",
        str(path),
    )
    loaded = load_model(path)
    assert loaded.meta.arch == "unet" and loaded.meta.arch_kwargs == {"encoder": "resnet18"}
    assert loaded.meta.num_classes == 6 and loaded.meta.in_channels == 3
    assert loaded.meta.output_stride == 32
    n = sum(p.numel() for p in loaded.module.parameters())
    assert f"{n:,}" in out
    with torch.no_grad():
        assert loaded.module(torch.zeros(1, 3, 64, 96)).shape == (1, 6, 64, 96)
    # the file exists now: no silent overwrite
    result = runner.invoke(model_app, ["create", "unet", "-o", str(path)])
    assert result.exit_code == 1 and "--overwrite" in result.output


def test_create_with_metadata_options(tmp_path: Path) -> None:
    path = tmp_path / "landsat.safetensors"
    _ok(
        "create",
        "deeplabv3plus",
        "--encoder",
        "tu-test_resnet",
        "--in-channels",
        "6",
        "--class-names",
        "water,forest,urban",
        "--band-names",
        "b1,b2,b3,b4,b5,b6",
        "--mean",
        "0.1",
        "--std",
        "0.2,0.2,0.2,0.3,0.3,0.3",
        "--scale",
        "0.0001",
        "--patch-size",
        "256",
        "--overlap",
        "0.25",
        "--arg",
        "decoder_channels=16",
        "--arg",
        "output_stride=8",
        "--arg",
        "atrous_rates=[6,12,18]",
        "-o",
        str(path),
    )
    meta = load_model(path).meta
    assert [c.name for c in meta.classes] == ["water", "forest", "urban"]
    assert meta.band_names == ("b1", "b2", "b3", "b4", "b5", "b6")
    assert meta.normalization is not None
    assert meta.normalization.mean == (0.1,) * 6 and meta.normalization.std[-1] == 0.3
    assert meta.normalization.scale == (0.0001,) * 6
    assert meta.patch_size == (256, 256) and meta.overlap == 0.25
    assert meta.arch_kwargs["encoder_output_stride"] == 8 and meta.output_stride == 8
    assert meta.arch_kwargs["decoder_atrous_rates"] == [6, 12, 18]


def test_create_volume_model_with_preset(tmp_path: Path) -> None:
    path = tmp_path / "ct.safetensors"
    _ok(
        "create",
        "unet3d",
        "--in-channels",
        "1",
        "--classes",
        "3",
        "--spatial-dims",
        "3",
        "--arg",
        "base_channels=2",
        "--arg",
        "norm=instance",
        "--orientation",
        "RAS",
        "--normalization",
        "uint8",
        "-o",
        str(path),
    )
    meta = load_model(path).meta
    assert meta.spatial_dims == 3 and meta.orientation == "RAS" and meta.output_stride == 8
    assert meta.arch_kwargs["norm"] == "instance"
    assert meta.normalization is not None and meta.normalization.scale == (1 / 255,)
    imagenet = tmp_path / "rgb.safetensors"
    _ok(
        "create",
        "unet2d",
        "--arg",
        "depth=1",
        "--arg",
        "base_channels=2",
        "--normalization",
        "imagenet",
        "-o",
        str(imagenet),
    )
    norm = load_model(imagenet).meta.normalization
    assert norm is not None and norm.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "unte", "-o", "{tmp}/a.safetensors"], "did you mean 'unet'"),
        (["create", "unet", "--spatial-dims", "3", "-o", "{tmp}/a.safetensors"], "unet3d"),
        (
            ["create", "unet2d", "--classes", "3", "--class-names", "a,b", "-o", "{tmp}/a.st"],
            "--class-names",
        ),
        (
            [
                "create",
                "unet2d",
                "--in-channels",
                "4",
                "--normalization",
                "imagenet",
                "-o",
                "{tmp}/a.st",
            ],
            "preset imagenet",
        ),
        (["create", "unet2d", "--arg", "depth", "-o", "{tmp}/a.st"], "KEY=VALUE"),
        (["info", "{tmp}/missing.safetensors"], "not found"),
        (["export", "{tmp}/missing.safetensors", "--to", "tflite"], "torchscript or onnx"),
    ],
)
def test_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(model_app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.strip().count("\n") == 0
    assert "Traceback" not in result.output


def test_info_prints_parameter_count(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    _ok(
        "create",
        "fcn8s",
        "--encoder",
        "tu-test_resnet",
        "--arg",
        "head_channels=16",
        "-o",
        str(path),
    )
    n = sum(p.numel() for p in load_model(path).module.parameters())
    out = _ok("info", str(path), "--patch-size", "64")
    assert f"parameters:       {n:,}" in out
    assert "output stride:    32" in out and "GFLOPs" in out and "receptive field:" in out
    data = json.loads(_ok("info", str(path), "--json", "--no-receptive-field"))
    assert data["parameters"] == n and data["output_stride"] == 32
    assert data["meta"]["arch"] == "fcn8s" and data["receptive_field"] is None


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_both_formats(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.safetensors"
    _ok(
        "create",
        "unet2d",
        "--arg",
        "depth=2",
        "--arg",
        "base_channels=4",
        "--classes",
        "3",
        "-o",
        str(path),
    )
    out = _ok("export", str(path), "--to", "onnx")
    assert "m.onnx" in out and (tmp_path / "m.onnx.yaml").is_file()
    out = _ok(
        "export",
        str(path),
        "--to",
        "torchscript",
        "-o",
        str(tmp_path / "m.pt"),
        "--sidecar-format",
        "json",
    )
    assert (tmp_path / "m.pt.json").is_file()
    native = load_model(path)
    x = torch.randn(2, 3, 12, 20)
    for exported in (tmp_path / "m.onnx", tmp_path / "m.pt"):
        loaded = load_model(exported)
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(x), native.module(x), atol=1e-4, rtol=1e-4)
    info = _ok("info", str(tmp_path / "m.onnx"))
    assert "runtime:          onnx" in info


def test_create_with_concepts_and_info_shows_them(tmp_path: Path) -> None:
    concepts = tmp_path / "concepts.yaml"
    concepts.write_text(
        "liver: {category: AnatomicalStructure, type: Liver}\n"
        "tumour:\n  category: {scheme: SCT, code: '49755003', meaning: Morphologically Altered Structure}\n"
        "  type: {scheme: SCT, code: '108369006', meaning: Neoplasm}\n"
    )
    path = tmp_path / "m.safetensors"
    _ok(
        "create",
        "pixel",
        "--class-names",
        "background,liver,tumour",
        "--in-channels",
        "1",
        "--concepts",
        str(concepts),
        "-o",
        str(path),
    )
    meta = load_model(path).meta
    assert meta.concept_of("tumour") is not None
    assert meta.concept_of("liver").type.code == "10200004"  # type: ignore[union-attr]
    out = _ok("info", str(path), "--no-flops", "--no-receptive-field")
    assert 'concept liver:    SCT 10200004 "Liver" in SCT 91723000 "Anatomical Structure"' in out
    data = json.loads(_ok("info", str(path), "--json", "--no-flops", "--no-receptive-field"))
    assert data["meta"]["concepts"]["tumour"]["type"]["meaning"] == "Neoplasm"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("livr: {category: AnatomicalStructure, type: Liver}\n", "did you mean 'liver'"),
        ("liver: {category: AnatomicalStructure, type: Livr}\n", "did you mean 'Liver'"),
        ("- liver\n", "must map class names"),
    ],
)
def test_bad_concepts_files_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    concepts = tmp_path / "concepts.yaml"
    concepts.write_text(text)
    args = ["create", "pixel", "--class-names", "background,liver", "--in-channels", "1"]
    result = runner.invoke(
        model_app, [*args, "--concepts", str(concepts), "-o", str(tmp_path / "m.safetensors")]
    )
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.strip().count("\n") == 0
    assert not (tmp_path / "m.safetensors").exists()
