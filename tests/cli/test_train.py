"""``segflow train`` and ``segflow demo`` from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import zarr
from typer.testing import CliRunner

from segflow.cli.train import parse_arch_args, parse_classes, register
from segflow.errors import ConfigError
from segflow.models import load_model
from segflow.models.files import read_meta
from segflow.samples import make_landcover_scene
from tests.conftest import write_nifti, write_tif


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


TINY_TRAIN = [
    "--arch-arg", "depth=1", "--arch-arg", "base_channels=4", "--batch-size", "2",
    "--epochs", "1", "--steps-per-epoch", "1", "--val-patches", "1", "--threads", "1",
    "--no-progress", "--no-half",
]  # fmt: skip


def _provenance(store: Path) -> dict[str, Any]:
    attrs: dict[str, Any] = zarr.open_group(store, mode="r").attrs["segflow"]
    return dict(attrs["provenance"])


def test_a_model_trained_at_20_m_declares_it_and_runs_resample_10_m_input(
    tmp_path: Path,
) -> None:
    from segflow.cli.main import app

    make_landcover_scene(tmp_path / "t.tif", tmp_path / "t_mask.tif", size=(64, 64), seed=1,
                         pixel_size=20.0)  # fmt: skip
    model = tmp_path / "m.safetensors"
    trained = CliRunner().invoke(app, [
        "train", "-i", str(tmp_path / "t.tif"), "-k", str(tmp_path / "t_mask.tif"),
        "-o", str(model), "--classes", "landcover", "--patch-size", "32", *TINY_TRAIN,
    ])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    meta = read_meta(model)
    assert meta.resolution == 20.0 and meta.spacing is None
    assert meta.provenance["resolution"]["from"] == "training data"
    info = CliRunner().invoke(app, ["model", "info", str(model), "--no-receptive-field"])
    assert info.exit_code == 0 and "20 m per pixel" in info.output

    make_landcover_scene(tmp_path / "r.tif", tmp_path / "r_truth.tif", size=(64, 64), seed=2,
                         pixel_size=10.0)  # fmt: skip
    ran = CliRunner().invoke(app, ["run", str(tmp_path / "r.tif"), "-m", str(model),
                                   "-o", str(tmp_path / "out"), "--no-flow"])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    provenance = _provenance(tmp_path / "out" / "r.zarr")
    assert provenance["resampling"] == {
        "input_spacing": [10.0, 10.0], "model_spacing": [20.0, 20.0], "model_grid": [32, 32],
    }  # fmt: skip
    assert any(w.startswith("resampling") for w in provenance["warnings"])


def test_a_volume_model_declares_its_spacing_and_resamples_finer_scans(tmp_path: Path) -> None:
    from segflow.cli.main import app

    labels = np.zeros((24, 24, 12), dtype=np.uint8)
    labels[6:18, 6:18, 3:9] = 1
    noise = np.random.default_rng(0).normal(0, 20, labels.shape)
    image = (labels.astype(np.int16) * 300 + noise).astype(np.int16)
    lps = np.diag([-1.5, -1.5, 3.0, 1.0])
    write_nifti(tmp_path / "ct.nii.gz", image, lps)
    write_nifti(tmp_path / "ct_label.nii.gz", labels, lps)
    model = tmp_path / "v.safetensors"
    trained = CliRunner().invoke(app, [
        "train", "-i", str(tmp_path / "ct.nii.gz"), "-k", str(tmp_path / "ct_label.nii.gz"),
        "-o", str(model), "--arch", "unet3d", "--patch-size", "8", "--val-fraction", "0.25",
        *TINY_TRAIN,
    ])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    meta = read_meta(model)
    assert meta.spacing == (1.5, 1.5, 3.0) and meta.orientation == "LPS"
    info = CliRunner().invoke(app, ["model", "info", str(model), "--no-receptive-field"])
    assert info.exit_code == 0 and "1.5 x 1.5 x 3 mm" in info.output

    fine = np.diag([-1.0, -1.0, 1.5, 1.0])  # the same field of view, finer voxels
    write_nifti(tmp_path / "fine.nii.gz", np.zeros((36, 36, 24), np.int16), fine)
    ran = CliRunner().invoke(app, ["run", str(tmp_path / "fine.nii.gz"), "-m", str(model),
                                   "-o", str(tmp_path / "out"), "--no-flow"])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    resampling = _provenance(tmp_path / "out" / "fine.zarr")["resampling"]
    assert resampling["input_spacing"] == [1.0, 1.0, 1.5]
    assert resampling["model_spacing"] == [1.5, 1.5, 3.0]
    assert resampling["model_grid"] == [24, 24, 12]


def test_a_given_spacing_is_recorded_with_a_warning(tmp_path: Path) -> None:
    from segflow.cli.main import app

    labels = np.zeros((16, 16, 16), dtype=np.uint8)
    labels[4:12, 4:12, 4:12] = 1
    lps = np.diag([-1.5, -1.5, 3.0, 1.0])
    write_nifti(tmp_path / "ct.nii.gz", labels.astype(np.int16) * 100, lps)
    write_nifti(tmp_path / "ct_label.nii.gz", labels, lps)
    model = tmp_path / "v.safetensors"
    args = ["train", "-i", str(tmp_path / "ct.nii.gz"), "-k", str(tmp_path / "ct_label.nii.gz"),
            "-o", str(model), "--arch", "unet3d", "--patch-size", "8", *TINY_TRAIN]  # fmt: skip
    trained = CliRunner().invoke(app, [*args, "--spacing", "2"])
    assert trained.exit_code == 0, trained.output
    assert "warning: recording the given spacing 2 x 2 x 2 mm" in trained.output
    meta = read_meta(model)
    assert meta.spacing == (2.0, 2.0, 2.0) and meta.provenance["resolution"]["from"] == "given"
    assert meta.provenance["config"]["spacing"] == [2.0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resolution", "10"], "inputs are volumes; give their voxel spacing with --spacing"),
        (["--spacing", "1,2"], "--spacing needs 1 or 3 values"),
        (["--spacing", "0"], "spacing takes positive numbers"),
        (["--spacing", "1", "--resolution", "2"], "not both"),
    ],
)
def test_resolution_mistakes_are_one_line(
    tmp_path: Path, app: typer.Typer, extra: list[str], message: str
) -> None:
    labels = np.zeros((16, 16, 16), dtype=np.uint8)
    labels[4:12, 4:12, 4:12] = 1
    write_nifti(tmp_path / "ct.nii.gz", labels.astype(np.int16), np.diag([1.5, 1.5, 3.0, 1.0]))
    write_nifti(tmp_path / "ct_label.nii.gz", labels, np.diag([1.5, 1.5, 3.0, 1.0]))
    result = CliRunner().invoke(app, [
        "train", "-i", str(tmp_path / "ct.nii.gz"), "-k", str(tmp_path / "ct_label.nii.gz"),
        "-o", str(tmp_path / "m.safetensors"), "--arch", "unet3d", "--no-progress", *extra,
    ])  # fmt: skip
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "m.safetensors").exists()
