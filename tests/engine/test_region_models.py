"""Every registered architecture, and its exports, through the engine on odd-sized inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from segflow import segment
from segflow.models import export_model, list_models, load_model, save_model
from tests.conftest import textured, write_nifti, write_tif
from tests.models.tiny import tiny_model


def _input(tmp_path: Path, spatial_dims: int) -> Path:
    if spatial_dims == 3:
        volume = textured((37, 29, 21), 1, seed=3, dtype="int16")[0]
        return write_nifti(tmp_path / "in.nii.gz", volume, np.diag([1.0, 1.0, 2.0, 1.0]))
    return write_tif(tmp_path / "in.tif", textured((157, 203), 3, seed=3), tile=None)


def _labels(store: Path) -> np.ndarray:
    group = zarr.open_group(store, mode="r")
    return group["labels"][...] if "labels" in group else group["0"][...]


def _model_file(tmp_path: Path, arch: str) -> tuple[Path, int]:
    torch.manual_seed(0)
    module, meta = tiny_model(arch, classes=3)
    path = tmp_path / f"{arch}.safetensors"
    save_model(module, meta, path)
    return path, meta.spatial_dims


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_predicts_through_the_engine_on_odd_sizes(tmp_path, arch):
    model_path, dims = _model_file(tmp_path, arch)
    source = _input(tmp_path, dims)
    patch = 32 if dims == 3 else 128
    if arch == "pan":
        patch = 128  # PAN needs inputs of at least its output stride (128)
    result = segment(
        source, model_path, tmp_path / "o.zarr", patch_size=patch, overlap=0.25, device="cpu"
    )
    labels = _labels(tmp_path / "o.zarr")
    expected_shape = (37, 29, 21) if dims == 3 else (157, 203)
    assert labels.shape == expected_shape
    assert labels.max() < 3  # every pixel predicted: no nodata left in a fully valid image
    assert result.stats["valid_pixels"] == int(np.prod(expected_shape))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "fcn8s", "unet2d", "unet3d"])
@pytest.mark.parametrize("runtime", ["torchscript", "onnx"])
def test_exports_give_the_same_labels_as_the_native_model(tmp_path, arch, runtime):
    model_path, dims = _model_file(tmp_path, arch)
    loaded = load_model(model_path)
    with torch.no_grad():  # sharpen random logits so labels are not decided by rounding noise
        for p in loaded.module.parameters():
            p.mul_(1.5)
    save_model(loaded.module, loaded.meta, model_path)
    exported = export_model(
        model_path, to=runtime, out=tmp_path / f"m.{'onnx' if runtime == 'onnx' else 'pt'}"
    )
    source = _input(tmp_path, dims)
    patch = 32 if dims == 3 else 96
    segment(source, model_path, tmp_path / "native.zarr", patch_size=patch, device="cpu")
    segment(source, exported.path, tmp_path / "exported.zarr", patch_size=patch, device="cpu")
    agreement = (_labels(tmp_path / "native.zarr") == _labels(tmp_path / "exported.zarr")).mean()
    assert agreement >= 0.9999, agreement
