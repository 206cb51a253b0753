"""The CUDA path (AMP, device placement); skipped where no GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from segflow import segment
from segflow.models import LoadedModel, create_model
from segflow.models.meta import ClassInfo, ModelMeta, Normalization

from .conftest import textured, write_tif

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]


@pytest.mark.parametrize("amp", [False, True])
def test_cuda_labels_match_cpu_labels(tmp_path, amp):
    torch.manual_seed(0)
    module = create_model("unet2d", in_channels=3, classes=4, depth=3, base_channels=8).eval()
    meta = ModelMeta(
        arch="unet2d",
        in_channels=3,
        output_stride=8,
        normalization=Normalization(mean=(128.0,) * 3, std=(64.0,) * 3),
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(4)),
    )
    model = LoadedModel(meta=meta, module=module, sha256="gpu-test", path=None, runtime="torch")
    path = write_tif(tmp_path / "in.tif", textured((300, 257), 3, seed=4), tile=None)
    segment(path, model, tmp_path / "cpu.zarr", patch_size=128, device="cpu")
    segment(path, model, tmp_path / "gpu.zarr", patch_size=128, device="cuda", amp=amp)
    cpu = zarr.open_group(tmp_path / "cpu.zarr", mode="r")["labels"][...]
    gpu = zarr.open_group(tmp_path / "gpu.zarr", mode="r")["labels"][...]
    assert (cpu == gpu).mean() >= (0.999 if amp else 0.9999)
    assert np.isin(gpu, [0, 1, 2, 3]).all()


def test_cuda_uncertainty_matches_cpu(tmp_path):
    # the blend stays on the GPU; its slabs come back for the float64 entropy
    torch.manual_seed(0)
    module = create_model("unet2d", in_channels=3, classes=4, depth=3, base_channels=8).eval()
    meta = ModelMeta(
        arch="unet2d",
        in_channels=3,
        output_stride=8,
        normalization=Normalization(mean=(128.0,) * 3, std=(64.0,) * 3),
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(4)),
    )
    model = LoadedModel(meta=meta, module=module, sha256="gpu-test-u", path=None, runtime="torch")
    path = write_tif(tmp_path / "in.tif", textured((300, 257), 3, seed=4), tile=None)
    options = dict(patch_size=128, uncertainty=True, amp=False)
    segment(path, model, tmp_path / "cpu.zarr", device="cpu", **options)
    segment(path, model, tmp_path / "gpu.zarr", device="cuda", **options)
    cpu = zarr.open_group(tmp_path / "cpu.zarr", mode="r")["uncertainty"][...].astype(int)
    gpu = zarr.open_group(tmp_path / "gpu.zarr", mode="r")["uncertainty"][...].astype(int)
    assert np.abs(cpu - gpu).max() <= 2 and (np.abs(cpu - gpu) <= 1).mean() >= 0.999
    assert gpu.max() < 255
