"""``segflow train`` and ``segflow demo`` from the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from segflow.cli.train import parse_arch_args, parse_classes, register
from segflow.errors import ConfigError
from segflow.models import load_model
from segflow.samples import make_landcover_scene
from tests.conftest import write_tif


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_train_command_writes_a_model(app: typer.Typer, tmp_path: Path) -> None:
    make_landcover_scene(tmp_path / "a.tif", tmp_path / "a_mask.tif", size=(128, 128), seed=1)
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(app, [
        "train", "-i", str(tmp_path / "a.tif"), "-k", str(tmp_path / "a_mask.tif"),
        "-o", str(out), "--classes", "landcover", "--arch", "unet2d",
        "--arch-arg", "depth=2", "--arch-arg", "base_channels=4", "--patch-size", "32",
        "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2", "--val-patches", "2",
        "--threads", "1", "--no-progress", "--balance", "--class-weights", "auto",
        "--dice-weight", "0.5", "--val-fraction", "0.25",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    meta = load_model(out).meta
    assert meta.classes[3].name == "urban" and meta.arch_kwargs["base_channels"] == 4
    assert meta.provenance["config"]["balance"] is True


def test_train_errors_are_one_line(app: typer.Typer, tmp_path: Path) -> None:
    write_tif(tmp_path / "a.tif", np.ones((3, 32, 32), np.uint8))
    write_tif(tmp_path / "a_mask.tif", np.zeros((1, 40, 32), np.uint8))
    result = CliRunner().invoke(app, [
        "train", "-i", str(tmp_path / "a.tif"), "-k", str(tmp_path / "a_mask.tif"),
        "-o", str(tmp_path / "m.safetensors"), "--no-progress",
    ])  # fmt: skip
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "same grid" in lines[0]


def test_option_parsers(tmp_path: Path) -> None:
    classes = parse_classes("a,b,c")
    assert classes is not None and [c.name for c in classes] == ["a", "b", "c"]
    path = tmp_path / "classes.json"
    path.write_text('[{"name": "sea", "color": [0, 0, 255]}, "land"]')
    parsed = parse_classes(str(path))
    assert parsed is not None and parsed[0].color == (0, 0, 255) and parsed[1].name == "land"
    assert parse_arch_args(["depth=3", "norm=batch", "widths=[1,2]"]) == {
        "depth": 3, "norm": "batch", "widths": [1, 2],
    }  # fmt: skip
    with pytest.raises(ConfigError, match="--arch-arg takes KEY=VALUE"):
        parse_arch_args(["depth"])


def test_demo_command_small(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--size", "small", "--no-flow",
                                      "--no-phantom", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and (out / "landcover.zarr").is_dir()
    assert (out / "landcover_preview.png").is_file() and (out / "demo_summary.json").is_file()
