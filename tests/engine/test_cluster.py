"""One worker process per device: each pinned to its own device, the same bytes as one process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from segflow import segment
from segflow.engine.cluster import device_cluster
from segflow.engine.devices import WORKER_DEVICE
from segflow.models import LoadedModel, create_model
from segflow.models.meta import ClassInfo, ModelMeta, Normalization
from tests.conftest import save, textured, write_tif


def _pinning() -> tuple[str | None, str | None, bool]:
    """What a worker process sees: its CUDA_VISIBLE_DEVICES, its device, and torch's view."""
    return (
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        os.environ.get(WORKER_DEVICE),
        torch.cuda.is_available(),
    )


def _by_name(client, results: dict[str, object]) -> dict[str, object]:
    names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    return {names[address]: value for address, value in results.items()}


def unet_file(folder: Path) -> Path:
    """A small untrained U-Net in a real model file: overlaps and blending change its labels."""
    torch.manual_seed(0)
    shape = {"depth": 2, "base_channels": 4}
    module = create_model("unet2d", in_channels=3, classes=4, **shape).eval()
    with torch.no_grad():  # untrained, the biases alone would pick one class everywhere
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    meta = ModelMeta(
        arch="unet2d",
        arch_kwargs=shape,
        in_channels=3,
        output_stride=4,
        normalization=Normalization(mean=(128.0,) * 3, std=(64.0,) * 3),
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(4)),
    )
    model = LoadedModel(meta=meta, module=module, sha256="unet", path=None, runtime="torch")
    return save(model, folder / "unet.safetensors")


@pytest.mark.slow
def test_each_worker_is_pinned_to_its_own_gpu():
    # no GPU is needed to start the workers: the pinning is their environment
    with device_cluster(["cuda:0", "cuda:1"], visible=["2", "3"]) as client:
        seen = _by_name(client, client.run(_pinning))
        info = client.scheduler_info()["workers"].values()
        slots = {w["name"]: (w["nthreads"], w["resources"]) for w in info}
    assert {name: value[:2] for name, value in seen.items()} == {
        "device-0": ("2", "cuda:0"),
        "device-1": ("3", "cuda:1"),
    }
    assert slots == {"device-0": (1, {"GPU": 1}), "device-1": (1, {"GPU": 1})}


@pytest.mark.slow
def test_cpu_workers_see_no_gpu():
    with device_cluster(["cpu", "cpu"]) as client:
        seen = _by_name(client, client.run(_pinning))
    assert seen == {"device-0": ("", "cpu", False), "device-1": ("", "cpu", False)}


@pytest.mark.slow
def test_two_device_workers_write_the_bytes_of_one_threaded_process(tmp_path):
    image = textured((300, 260), 3, seed=7)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = unet_file(tmp_path)
    options = dict(patch_size=64, overlap=0.25, chunk_size=64, region_size=64)
    options["probabilities"] = "uint8"
    segment(path, model, tmp_path / "threads.zarr", device="cpu", **options)
    result = segment(path, model, tmp_path / "devices.zarr", devices="cpu,cpu", **options)
    assert result.status == "complete"
    one = zarr.open_group(tmp_path / "threads.zarr", mode="r")
    two = zarr.open_group(tmp_path / "devices.zarr", mode="r")
    assert len(np.unique(one["labels"][...])) > 1  # a real segmentation, not one class
    np.testing.assert_array_equal(two["labels"][...], one["labels"][...])
    np.testing.assert_array_equal(two["probabilities"][...], one["probabilities"][...])
    # where it ran is not part of what the store records: one process resumes it
    again = segment(path, model, tmp_path / "devices.zarr", device="cpu", resume=True, **options)
    assert again.status == "complete"


def test_a_local_cluster_for_a_gpu_asks_for_devices():
    from segflow.engine.cluster import cluster_for
    from segflow.errors import ConfigError
    from segflow.options import RunOptions

    # its tasks would wait for a GPU slot that plain LocalCluster workers do not offer
    with (
        pytest.raises(ConfigError, match="name the GPUs with devices"),
        cluster_for(RunOptions(scheduler="local", device="cuda:1")),
    ):
        pass
