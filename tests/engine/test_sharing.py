"""Patches several region tasks touch: predicted once, handed on, the output unchanged."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import segflow.engine.execute
from segflow import segment
from segflow.engine.execute import execute
from segflow.engine.grid import make_grid
from segflow.engine.region import task_indices
from segflow.engine.sharing import (
    SCRATCH_FOLDER,
    Handoff,
    SharedPatches,
    patch_users,
    plan_handoff,
    shared_patches,
    sharing,
)
from segflow.io.open import open_source
from segflow.io.zarr_sink import ZarrSink
from segflow.models import LoadedModel
from segflow.models.meta import ClassInfo, ModelMeta
from segflow.options import RunOptions
from segflow.plan import plan
from tests.conftest import textured, two_worker_client, write_nifti, write_tif
from tests.engine.test_region import conv_model

LEFT = (slice(0, 8), slice(0, 8))
RIGHT = (slice(0, 8), slice(8, 16))


def test_only_patches_in_several_regions_are_shared():
    grid = make_grid((8, 16), 8, 4)  # patches start at 0, 4, 8 along x
    assert patch_users(grid, [LEFT, RIGHT]) == {(0, 1): [0, 1]}


def test_the_first_region_owns_a_shared_patch_and_the_other_waits_for_it(tmp_path):
    grid = make_grid((8, 16), 8, 4)
    plan = plan_handoff(grid, [(0, 0), (0, 1)], [LEFT, RIGHT], tmp_path)
    assert plan.handoff.owners == {(0, 1): (0, 0)}
    assert plan.handoff.parts == {(0, 1): (slice(0, 8), slice(8, 12))}  # inside the right one
    assert plan.after == {(0, 0): [], (0, 1): [(0, 0)]}
    assert plan.handoff.predicts((0, 1), (0, 0))
    assert not plan.handoff.predicts((0, 1), (0, 1))
    assert plan.handoff.predicts((0, 0), (0, 0))  # not shared: its region predicts it


def test_a_saved_part_reads_back_bit_for_bit_and_is_freed_after_its_last_user(tmp_path):
    grid = make_grid((8, 16), 8, 4)
    plan = plan_handoff(grid, [(0, 0), (0, 1)], [LEFT, RIGHT], tmp_path)
    logits = torch.randn(2, 8, 8)
    plan.handoff.save((0, 1), grid.extent((0, 1)), logits)
    part = plan.handoff.load((0, 1))
    assert part is not None
    assert part.extent == (slice(0, 8), slice(8, 12))
    assert part.logits.numpy().tobytes() == logits[:, :, 4:].contiguous().numpy().tobytes()
    plan.finished({(0, 0)})
    assert plan.handoff.path((0, 1)).exists()  # the right region has not run yet
    plan.finished({(0, 0), (0, 1)})
    assert not plan.handoff.path((0, 1)).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def _two_regions(
    tmp_path: Path, memory_bytes: int = 0
) -> tuple[SharedPatches, tuple[int, int], tuple[slice, ...]]:
    grid = make_grid((8, 16), 8, 4)
    shared = SharedPatches(grid, [LEFT, RIGHT], tmp_path, memory_bytes=memory_bytes)
    return shared, (0, 1), grid.extent((0, 1))


def test_in_one_process_the_first_to_claim_a_patch_predicts_it_for_the_other(tmp_path):
    shared, index, extent = _two_regions(tmp_path)  # no memory: the part goes to disk
    left, right = object(), object()
    assert shared.claim(index, left)
    assert not shared.claim(index, right)  # the left task predicts it
    logits = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    shared.publish(index, extent, logits, LEFT)
    part = shared.take(index, right)
    assert part is not None
    assert part.extent == (slice(0, 8), slice(8, 12))  # the half inside the right region
    torch.testing.assert_close(part.logits, logits[:, :, 4:], rtol=0, atol=0)
    shared.release(index)
    assert len(list(tmp_path.iterdir())) == 1  # the right task still needs it
    shared.release(index)
    assert list(tmp_path.iterdir()) == []  # deleted after its last user


def test_parts_within_the_memory_budget_stay_in_memory_and_are_dropped_after_their_last_user(
    tmp_path,
):
    part_bytes = 2 * 8 * 4 * 4  # two classes, the 8 x 4 half inside the right region
    shared, index, extent = _two_regions(tmp_path, memory_bytes=part_bytes)
    left, right = object(), object()
    assert shared.claim(index, left)
    logits = torch.randn(2, 8, 8)
    shared.publish(index, extent, logits, LEFT)
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert shared.memory_bytes == part_bytes
    logits.zero_()  # the kept part is a copy, not a view of the predictor's output
    part = shared.take(index, right)
    assert part is not None
    assert part.extent == (slice(0, 8), slice(8, 12))
    shared.release(index)
    shared.release(index)
    assert shared.memory_bytes == 0


def test_parts_past_the_memory_budget_go_to_disk(tmp_path):
    part_bytes = 2 * 8 * 4 * 4
    shared, index, extent = _two_regions(tmp_path, memory_bytes=part_bytes - 1)
    assert shared.claim(index, object())
    shared.publish(index, extent, torch.randn(2, 8, 8), LEFT)
    assert len(list(tmp_path.iterdir())) == 1  # one byte short: written to disk
    assert shared.memory_bytes == 0


def test_a_failed_claimer_does_not_leave_its_neighbour_waiting(tmp_path):
    shared, index, _ = _two_regions(tmp_path)
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
    assert not shared.claim(index, left)  # and holds the claim now


def test_a_run_registers_its_shared_patches_only_while_it_runs(tmp_path):
    grid = make_grid((8, 16), 8, 4)
    with sharing(grid, [LEFT, RIGHT], tmp_path) as key:
        assert shared_patches(key) is not None
    assert shared_patches(key) is None
    assert shared_patches(None) is None


def test_a_part_that_is_missing_reads_as_none(tmp_path):
    handoff = Handoff(tmp_path, {(0, 1): (0, 0)}, {(0, 1): RIGHT})
    assert handoff.load((0, 1)) is None


def _run(tmp_path, name, path, model, **kwargs):
    out = tmp_path / f"{name}.zarr"
    result = segment(path, model, out, probabilities="float16", device="cpu", **kwargs)
    sink = ZarrSink.open(out)
    assert not (out / SCRATCH_FOLDER).exists()  # the scratch folder is gone with the run
    return result.stats, sink.labels_array()[...], sink.probabilities_array()[...]


def _alone(monkeypatch, *args, **kwargs):
    """The same run with every region predicting every patch it touches."""
    with monkeypatch.context() as m:
        m.setattr(segflow.engine.execute, "HAND_ON_PATCHES", False)
        return _run(*args, **kwargs)


def _same(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2].view(np.uint16), b[2].view(np.uint16))


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
@pytest.mark.parametrize(("chunk", "region"), [(64, 64), (64, 128), (100, 100), (96, 192)])
def test_every_patch_is_predicted_once_and_the_bits_do_not_change(
    tmp_path, monkeypatch, scheduler, chunk, region
):
    image = textured((333, 287), 3, seed=5)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = conv_model()
    kwargs = dict(
        patch_size=64, overlap=0.25, chunk_size=chunk, region_size=region, scheduler=scheduler
    )
    shared = _run(tmp_path, "shared", path, model, **kwargs)
    alone = _alone(monkeypatch, tmp_path, "alone", path, model, **kwargs)
    one = _run(tmp_path, "one", path, model, patch_size=64, overlap=0.25, region_size=512)
    assert shared[0]["region_tasks"] > 1
    assert shared[0]["patches_predicted"] == len(make_grid((333, 287), 64, 16))
    assert alone[0]["patches_predicted"] > shared[0]["patches_predicted"]
    _same(shared, alone)
    _same(shared, one)  # one region holding the whole image


def test_a_two_worker_cluster_hands_patches_on_with_the_same_bits(tmp_path, monkeypatch):

    image = textured((260, 300), 3, seed=4)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = conv_model()
    kwargs = dict(patch_size=64, overlap=0.25, chunk_size=48, region_size=96)
    alone = _alone(monkeypatch, tmp_path, "alone", path, model, **kwargs)
    with two_worker_client() as client:
        shared = _run(tmp_path, "cluster", path, model, scheduler=client, **kwargs)
    assert shared[0]["patches_predicted"] == len(make_grid((260, 300), 64, 16))
    _same(shared, alone)


class IntegerConv3d(nn.Module):
    """Two 3x3x3 convolutions with integer weights: exact sums, whatever the batch or threads.

    Float 3-D convolutions on a CPU may round differently with the batch size
    and thread count, which handing patches on changes; exact arithmetic keeps
    the comparison about the engine alone.
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


def _volume_model() -> LoadedModel:
    meta = ModelMeta(
        arch="intconv3d",
        spatial_dims=3,
        in_channels=1,
        output_stride=1,
        classes=(ClassInfo(name="a"), ClassInfo(name="b")),
    )
    return LoadedModel(
        meta=meta, module=IntegerConv3d().eval(), sha256="i3", path=None, runtime="torch"
    )


@pytest.mark.parametrize("region", [16, 32])
def test_volume_regions_predict_each_patch_once(tmp_path: Path, monkeypatch, region):
    rng = np.random.default_rng(0)
    volume = rng.integers(-5, 6, size=(40, 36, 30)).astype(np.int16)
    path = write_nifti(tmp_path / "v.nii.gz", volume, np.diag([1.0, 1.0, 1.0, 1.0]))
    model = _volume_model()
    kwargs = dict(patch_size=16, overlap=0.25, chunk_size=16, region_size=region)
    shared = _run(tmp_path, "shared", path, model, **kwargs)
    alone = _alone(monkeypatch, tmp_path, "alone", path, model, **kwargs)
    assert shared[0]["patches_predicted"] == len(make_grid((40, 36, 30), 16, 4))
    assert alone[0]["patches_predicted"] > shared[0]["patches_predicted"]
    _same(shared, alone)


def test_a_resumed_run_hands_patches_on_among_the_tasks_left(tmp_path):
    image = textured((200, 210), 3, seed=6)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = conv_model()
    options = RunOptions.from_mapping(
        {
            "patch_size": 64,
            "overlap": 0.25,
            "chunk_size": 64,
            "region_size": 64,
            "device": "cpu",
            "probabilities": "float16",
        }
    )
    reference = _run(tmp_path, "ref", path, model, patch_size=64, chunk_size=64, region_size=64)
    # an interrupted run: every other region written (their neighbours not)
    out = (tmp_path / "part.zarr").absolute()
    work = plan(open_source(path.absolute()), model, out, options)
    tasks = task_indices(work)
    execute(work, tasks[::2])
    resumed = segment(path, model, out, options, resume=True)
    assert resumed.stats["region_tasks"] == len(tasks) // 2
    sink = ZarrSink.open(out)
    np.testing.assert_array_equal(sink.labels_array()[...], reference[1])
    probs = sink.probabilities_array()[...]
    np.testing.assert_array_equal(probs.view(np.uint16), reference[2].view(np.uint16))
