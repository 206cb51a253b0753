"""A task's patches through the device queue and into the blend: layouts, failures, order."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from segflow import segment
from segflow.engine.device_queue import DeviceQueue, device_queue
from segflow.errors import RegionError
from segflow.models import LoadedModel
from tests.conftest import textured, write_tif
from tests.engine.test_region import ConvStack, conv_model


class ChannelsLast(nn.Module):
    """ConvStack whose output is channels-last: the same values, another memory layout."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ConvStack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x).contiguous(memory_format=torch.channels_last)
        assert not out.is_contiguous()
        return out


class FailsOnce(nn.Module):
    """ConvStack that raises on its third forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ConvStack()
        self.calls = 0
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("CUDA error: device-side assert triggered")
        return self.inner(x)


def _with_module(module: nn.Module, name: str) -> LoadedModel:
    base = conv_model()
    return LoadedModel(
        meta=base.meta, module=module.eval(), sha256=name, path=None, runtime="torch"
    )


def _run(tmp_path, model: LoadedModel, name: str) -> dict[str, np.ndarray]:
    out = tmp_path / f"{name}.zarr"
    segment(
        tmp_path / "in.tif",
        model,
        out,
        patch_size=32,
        overlap=0.25,
        chunk_size=48,
        region_size=96,
        probabilities="float16",
        device="cpu",
    )
    group = zarr.open_group(out, mode="r")
    return {"labels": group["labels"][...], "probabilities": group["probabilities"][...]}


@pytest.fixture
def scene(tmp_path):
    write_tif(tmp_path / "in.tif", textured((200, 170), channels=3))
    return tmp_path


def test_a_model_with_a_channels_last_output_blends_to_the_same_bytes(scene):
    expected = _run(scene, conv_model(), "contiguous")
    got = _run(scene, _with_module(ChannelsLast(), "channels-last"), "channels-last")
    assert got["labels"].tobytes() == expected["labels"].tobytes()
    assert got["probabilities"].tobytes() == expected["probabilities"].tobytes()


def test_a_failed_forward_fails_its_region_and_the_device_queue_goes_on(scene):
    with pytest.raises(RegionError, match="device-side assert"):
        _run(scene, _with_module(FailsOnce(), "fails-once"), "failed")
    queue: DeviceQueue = device_queue(torch.device("cpu"))
    assert queue.submit(0, lambda: "still serving").result(timeout=5) == "still serving"
    _run(scene, conv_model(), "after")  # the next run is not held up by the failed one


def test_the_device_queue_changes_timing_never_bytes(scene, monkeypatch):
    import segflow.engine.device_queue as device_queue_module

    queued = _run(scene, conv_model(), "queued")
    monkeypatch.setattr(device_queue_module, "QUEUED", False)  # each forward in its task
    inline = _run(scene, conv_model(), "inline")
    assert queued["labels"].tobytes() == inline["labels"].tobytes()
    assert queued["probabilities"].tobytes() == inline["probabilities"].tobytes()
