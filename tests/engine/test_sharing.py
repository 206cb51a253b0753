"""Patches shared between region tasks: each predicted once, the output unchanged."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

import segflow.engine.execute
import segflow.plan
from segflow import segment
from segflow.engine.grid import make_grid
from segflow.engine.sharing import SharedPatches, patch_users, shared_patches, sharing
from segflow.io.zarr_sink import ZarrSink
from segflow.models import LoadedModel
from segflow.models.meta import ClassInfo, ModelMeta
from tests.conftest import textured, write_nifti, write_tif
from tests.engine.test_region import conv_model

LEFT = (slice(0, 8), slice(0, 8))
RIGHT = (slice(0, 8), slice(8, 16))


def two_regions() -> tuple[SharedPatches, tuple[int, int], tuple[slice, slice]]:
    grid = make_grid((8, 16), 8, 4)  # patches start at 0, 4, 8 along x
    users = patch_users(grid, [LEFT, RIGHT])
    assert list(users) == [(0, 1)]  # only the middle patch straddles both regions
    return SharedPatches(users, budget_bytes=2**20), (0, 1), grid.extent((0, 1))


def test_only_patches_in_several_regions_are_shared():
    grid = make_grid((8, 16), 8, 4)
    users = patch_users(grid, [LEFT, RIGHT])
    assert users == {(0, 1): [LEFT, RIGHT]}


def test_a_claimed_patch_is_published_for_the_other_region_only():
    shared, index, extent = two_regions()
    left, right = object(), object()
    assert shared.claim(index, left)
    assert not shared.claim(index, right)  # the left task predicts it
    logits = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    shared.publish(index, extent, logits, LEFT)
    part = shared.take(index, right)
    assert part is not None
    assert part.extent == (slice(0, 8), slice(8, 12))  # the half inside the right region
    torch.testing.assert_close(part.logits, logits[:, :, 4:], rtol=0, atol=0)
    assert shared.free_slots == shared.slots - 1
    shared.release(index)
    assert shared.free_slots == shared.slots - 1  # the right task still holds it
    shared.release(index)
    assert shared.free_slots == shared.slots == 2**20 // logits.nbytes  # back in the pool


def test_a_patch_over_budget_is_predicted_again_by_its_next_user():
    _, index, extent = two_regions()
    shared = SharedPatches({index: [LEFT, RIGHT]}, budget_bytes=0)
    left, right = object(), object()
    assert shared.claim(index, left)
    shared.publish(index, extent, torch.zeros(2, 8, 8), LEFT)
    assert shared.take(index, right) is None  # not kept: the right task now owns it
    assert not shared.claim(index, left)


def test_a_failed_claimer_does_not_leave_its_neighbour_waiting():
    shared, index, _ = two_regions()
    left, right = object(), object()
    assert shared.claim(index, left)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(shared.take(index, right)))
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive()  # waiting for the left task's prediction
    shared.give_back(left)
    waiter.join(timeout=5)
    assert got == [None]  # it predicts the patch itself


def test_runs_are_registered_only_while_they_last():
    grid = make_grid((8, 16), 8, 4)
    with sharing(grid, [LEFT, RIGHT], 2**20) as key:
        assert shared_patches(key) is not None
    assert shared_patches(key) is None
    assert shared_patches(None) is None


def _run(tmp_path, name, path, model, **kwargs):
    out = tmp_path / f"{name}.zarr"
    result = segment(path, model, out, probabilities="float16", device="cpu", **kwargs)
    sink = ZarrSink.open(out)
    return result.stats, sink.labels_array()[...], sink.probabilities_array()[...]


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_regions_predict_each_patch_once_and_write_the_same_bits(tmp_path, monkeypatch, scheduler):
    image = textured((333, 287), 3, seed=5)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = conv_model()
    monkeypatch.setattr(segflow.plan, "TASK_TARGET_2D", 64)  # 6 x 5 regions
    kwargs = dict(patch_size=64, overlap=0.25, chunk_size=64, scheduler=scheduler)
    stats, labels, probs = _run(tmp_path, "shared", path, model, **kwargs)
    monkeypatch.setattr(segflow.engine.execute, "REGION_MEMORY_BYTES", 0)
    alone_stats, alone_labels, alone_probs = _run(tmp_path, "alone", path, model, **kwargs)

    assert stats["patches_predicted"] == len(make_grid((333, 287), 64, 16))
    assert alone_stats["patches_predicted"] > stats["patches_predicted"]
    np.testing.assert_array_equal(labels, alone_labels)
    np.testing.assert_array_equal(probs.view(np.uint16), alone_probs.view(np.uint16))


class IntegerConv3d(nn.Module):
    """Two 3x3x3 convolutions with integer weights: exact sums, whatever the batch or threads.

    Float 3-D convolutions on a CPU may round differently with the batch size
    and thread count, which sharing changes; exact arithmetic keeps the
    comparison about the engine alone.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.a = nn.Conv3d(1, 3, 3, padding=1)
        self.b = nn.Conv3d(3, 2, 3, padding=1)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.copy_(torch.randint(-2, 3, conv.weight.shape, generator=g).float())
                conv.bias.copy_(torch.randint(-3, 4, conv.bias.shape, generator=g).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_volume_regions_share_patches(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    volume = rng.integers(-5, 6, size=(40, 36, 30)).astype(np.int16)
    path = write_nifti(tmp_path / "v.nii.gz", volume, np.diag([1.0, 1.0, 1.0, 1.0]))
    meta = ModelMeta(
        arch="intconv3d",
        spatial_dims=3,
        in_channels=1,
        output_stride=1,
        classes=(ClassInfo(name="a"), ClassInfo(name="b")),
    )
    model = LoadedModel(
        meta=meta, module=IntegerConv3d().eval(), sha256="i3", path=None, runtime="torch"
    )
    monkeypatch.setattr(segflow.plan, "TASK_TARGET_3D", 16)
    kwargs = dict(patch_size=16, overlap=0.25, chunk_size=16)
    stats, labels, probs = _run(tmp_path, "shared", path, model, **kwargs)
    monkeypatch.setattr(segflow.engine.execute, "REGION_MEMORY_BYTES", 0)
    alone_stats, alone_labels, alone_probs = _run(tmp_path, "alone", path, model, **kwargs)
    assert stats["patches_predicted"] == len(make_grid((40, 36, 30), 16, 4))
    assert alone_stats["patches_predicted"] > 2 * stats["patches_predicted"]
    np.testing.assert_array_equal(labels, alone_labels)
    np.testing.assert_array_equal(probs.view(np.uint16), alone_probs.view(np.uint16))
