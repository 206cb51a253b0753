"""Blending on the GPU: the sums, argmax and softmax stay there; only labels come back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from segflow import segment
from segflow.engine.blend import Accumulator, BlendMode, device_window, patch_window
from segflow.engine.grid import make_grid
from tests.conftest import textured, write_tif
from tests.engine.test_region import conv_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]


@pytest.mark.parametrize("mode", [BlendMode.GAUSSIAN, BlendMode.CENTER])
def test_an_accumulator_on_the_gpu_gives_the_cpu_labels_and_probabilities(mode):
    grid = make_grid((150, 131), 32, 0.25)
    region = (slice(0, 150), slice(0, 131))
    cpu, gpu = Accumulator(4, region), Accumulator(4, region, device=torch.device("cuda"))
    generator = torch.Generator().manual_seed(0)
    for index in grid.indices():
        # whole numbers: with the centre crop's 0/1 weights every sum is exact
        logits = torch.randint(-8, 9, (4, 32, 32), generator=generator).float()
        cpu.add(logits, grid.extent(index), patch_window(mode, grid, index))
        window = device_window(mode, grid, index, 0.125, torch.device("cuda"))
        assert window.device.type == "cuda"
        gpu.add(logits.cuda(), grid.extent(index), window)
    on_gpu, on_cpu = gpu.labels(np.dtype(np.uint8)), cpu.labels(np.dtype(np.uint8))
    if mode is BlendMode.CENTER:
        np.testing.assert_array_equal(on_gpu, on_cpu)
    else:  # a GPU may fuse the multiply-add: near-ties can round the other way
        assert (on_gpu == on_cpu).mean() >= 0.999
    np.testing.assert_allclose(gpu.probabilities(), cpu.probabilities(), rtol=1e-5, atol=1e-6)


def test_a_run_on_the_gpu_predicts_each_patch_once_and_agrees_with_the_cpu(tmp_path):
    image = textured((300, 257), 3, seed=4)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    kwargs = dict(patch_size=64, overlap=0.25, chunk_size=64, region_size=128, amp=False)
    cpu = segment(path, conv_model(), tmp_path / "cpu.zarr", device="cpu", **kwargs)
    gpu = segment(path, conv_model(), tmp_path / "gpu.zarr", device="cuda", **kwargs)
    assert gpu.stats["patches_predicted"] == len(make_grid((300, 257), 64, 16))
    assert gpu.stats["patches_predicted"] == cpu.stats["patches_predicted"]
    a = zarr.open_group(tmp_path / "cpu.zarr", mode="r")["labels"][...]
    b = zarr.open_group(tmp_path / "gpu.zarr", mode="r")["labels"][...]
    assert (a == b).mean() >= 0.9999
