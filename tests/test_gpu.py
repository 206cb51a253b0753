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


def _unet(name: str) -> LoadedModel:
    """A small 2-D U-Net with seeded weights, 3 bands in, 4 classes."""
    torch.manual_seed(0)
    module = create_model("unet2d", in_channels=3, classes=4, depth=3, base_channels=8).eval()
    meta = ModelMeta(
        arch="unet2d",
        in_channels=3,
        output_stride=8,
        normalization=Normalization(mean=(128.0,) * 3, std=(64.0,) * 3),
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(4)),
    )
    return LoadedModel(meta=meta, module=module, sha256=name, path=None, runtime="torch")


@pytest.mark.parametrize("amp", [False, True])
def test_cuda_labels_match_cpu_labels(tmp_path, amp):
    model = _unet("gpu-test")
    path = write_tif(tmp_path / "in.tif", textured((300, 257), 3, seed=4), tile=None)
    segment(path, model, tmp_path / "cpu.zarr", patch_size=128, device="cpu")
    segment(path, model, tmp_path / "gpu.zarr", patch_size=128, device="cuda", amp=amp)
    cpu = zarr.open_group(tmp_path / "cpu.zarr", mode="r")["labels"][...]
    gpu = zarr.open_group(tmp_path / "gpu.zarr", mode="r")["labels"][...]
    assert (cpu == gpu).mean() >= (0.999 if amp else 0.9999)
    assert np.isin(gpu, [0, 1, 2, 3]).all()


def test_cuda_uncertainty_matches_cpu(tmp_path):
    # the blend stays on the GPU; its slabs come back for the float64 entropy
    model = _unet("gpu-test-u")
    path = write_tif(tmp_path / "in.tif", textured((300, 257), 3, seed=4), tile=None)
    options = dict(patch_size=128, uncertainty=True, amp=False)
    segment(path, model, tmp_path / "cpu.zarr", device="cpu", **options)
    segment(path, model, tmp_path / "gpu.zarr", device="cuda", **options)
    cpu = zarr.open_group(tmp_path / "cpu.zarr", mode="r")["uncertainty"][...].astype(int)
    gpu = zarr.open_group(tmp_path / "gpu.zarr", mode="r")["uncertainty"][...].astype(int)
    assert np.abs(cpu - gpu).max() <= 2 and (np.abs(cpu - gpu) <= 1).mean() >= 0.999
    assert gpu.max() < 255


def _seen_gpu() -> tuple[str, int]:
    """In a device worker: the GPU torch calls cuda:0 (its UUID), and how many it sees."""
    return str(torch.cuda.get_device_properties(0).uuid), torch.cuda.device_count()


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than 2 CUDA GPUs")


@two_gpus
def test_each_device_worker_runs_on_its_own_gpu():
    from segflow.engine.cluster import device_cluster
    from segflow.engine.devices import worker_devices

    with device_cluster(worker_devices(["cuda:0", "cuda:1"])) as client:
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
        seen = {names[a]: v for a, v in client.run(_seen_gpu).items()}
    expected = [str(torch.cuda.get_device_properties(i).uuid) for i in range(2)]
    assert seen == {"device-0": (expected[0], 1), "device-1": (expected[1], 1)}


@two_gpus
def test_two_gpus_write_the_bytes_of_one(tmp_path):
    from tests.engine.test_cluster import unet_file

    path = write_tif(tmp_path / "in.tif", textured((600, 520), 3, seed=7), tile=None)
    model = unet_file(tmp_path)
    options = dict(patch_size=64, chunk_size=64, region_size=128, probabilities="uint8")
    runs = {"one": "cuda:0", "two": "cuda:0,cuda:1"}
    for name, devices in runs.items():
        assert segment(path, model, tmp_path / f"{name}.zarr", devices=devices, **options)
    segment(path, model, tmp_path / "threads.zarr", device="cuda", **options)
    one, two, threads = (
        zarr.open_group(tmp_path / f"{n}.zarr", mode="r") for n in (*runs, "threads")
    )
    np.testing.assert_array_equal(two["labels"][...], one["labels"][...])
    np.testing.assert_array_equal(two["probabilities"][...], one["probabilities"][...])
    # threads batch shared patches differently: equal up to the GPU's rounding
    assert (threads["labels"][...] == two["labels"][...]).mean() >= 0.9999
