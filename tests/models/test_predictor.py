"""The predictor: logits on the CPU or left on the device, and batches that do not fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segflow.models.pixel import PixelClassifier
from segflow.models.predictor import Predictor


class FitsTwo(nn.Module):
    """Doubles its input, and runs out of memory above two patches, as a full GPU would."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.cat([x, -x], dim=1)


def test_a_batch_that_runs_out_of_memory_is_halved_with_one_warning():
    module = FitsTwo()
    predictor = Predictor(module, num_classes=2, device="cpu")
    batch = torch.randn(7, 1, 8, 8)
    with pytest.warns(
        RuntimeWarning, match="out of memory with 7 patches per forward; continuing with 3"
    ):
        first = predictor(batch)
    assert predictor.max_batch == 1  # 7 -> 3 -> 1: three did not fit either
    torch.testing.assert_close(first, torch.cat([batch, -batch], dim=1), rtol=0, atol=0)
    module.sizes.clear()
    second = predictor(batch)  # later batches are split at once, without a warning
    assert module.sizes == [1] * 7
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_one_patch_that_does_not_fit_is_an_error():
    class Never(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    predictor = Predictor(Never(), num_classes=2, device="cpu")
    with pytest.raises(torch.cuda.OutOfMemoryError), pytest.warns(RuntimeWarning):
        predictor(torch.randn(2, 1, 8, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_logits_stay_on_the_gpu_when_asked():
    predictor = Predictor(nn.Conv2d(1, 3, 1), num_classes=3, device="cuda", amp=False)
    batch = torch.randn(2, 1, 16, 16).pin_memory()
    assert predictor(batch, on_device=True).device.type == "cuda"
    on_cpu = predictor(batch)
    assert on_cpu.device.type == "cpu"
    torch.testing.assert_close(predictor(batch, on_device=True).cpu(), on_cpu)


def test_a_patch_alone_gets_the_logits_it_gets_in_a_batch():
    torch.manual_seed(0)
    predictor = Predictor(PixelClassifier(3, 6, spatial_dims=2).eval(), num_classes=6, device="cpu")
    batch = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    together = predictor(batch)
    for n in range(4):
        assert torch.equal(predictor(batch[n : n + 1])[0], together[n])
