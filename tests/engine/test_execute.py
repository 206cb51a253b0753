"""execute(): progress moves patch by patch; tasks in flight and parts kept share one budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segflow import segment
from segflow.engine import execute as ex
from segflow.engine.execute import task_bytes
from segflow.engine.grid import region_shape
from segflow.engine.region import RegionWork, task_grid_region, task_indices, tracks_weights
from segflow.io.open import open_source
from segflow.io.zarr_sink import ZarrSink
from segflow.options import RunOptions
from segflow.plan import plan
from tests.conftest import pixel_model, textured, write_tif


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_progress_of_one_region_moves_before_it_ends_and_ends_full(tmp_path, scheduler):
    path = write_tif(tmp_path / "in.tif", textured((200, 180), 1, seed=3), tile=None)
    seen: list[tuple[int, int]] = []
    segment(
        path,
        pixel_model([[1.0], [-1.0]], [0.0, 0.5]),
        tmp_path / "out.zarr",
        patch_size=32,
        overlap=0.25,
        batch_size=4,
        scheduler=scheduler,
        device="cpu",
        progress=lambda done, total: seen.append((done, total)),
    )
    total = seen[-1][1]
    assert seen[-1] == (total, total)
    # one region of many patches: the bar passes through values between 0 and the end
    assert any(0 < done < total for done, _ in seen)
    done_values = [done for done, t in seen if t == total]
    assert done_values == sorted(done_values)  # never goes back


def test_patches_all_nodata_still_count_once_their_region_ends(tmp_path):
    image = textured((128, 128), 1, seed=1).astype("float32")
    image[:, :64] = np.nan  # the left half's patches are skipped, never blended
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    seen: list[tuple[int, int]] = []
    segment(
        path,
        pixel_model([[1.0], [-1.0]], [0.0, 0.5]),
        tmp_path / "out.zarr",
        patch_size=32,
        overlap=0.0,
        device="cpu",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1][0] == seen[-1][1] > 0


def _planned(tmp_path, name: str, **options: object) -> tuple[RegionWork, tuple[int, ...]]:
    path = tmp_path / "in.tif"
    if not path.exists():
        write_tif(path, textured((200, 180), 1, seed=3), tile=None)
    settings = {"patch_size": 32, "chunk_size": 64, "region_size": 128, "device": "cpu"}
    run_options = RunOptions.from_mapping({**settings, **options})
    model = pixel_model([[1.0], [-1.0], [0.5]], [0.0, 0.5, 0.1])
    work = plan(open_source(path.absolute()), model, (tmp_path / name).absolute(), run_options)
    return work, task_indices(work)[0]


@pytest.mark.parametrize(
    ("options", "weights"),
    [
        ({}, False),
        ({"uncertainty": True}, True),  # the entropy of the normalized blend needs the weights
        ({"probabilities": "float16"}, True),
    ],
)
def test_a_task_counts_its_weight_sums_when_its_outputs_need_them(tmp_path, options, weights):
    work, task = _planned(tmp_path, "out.zarr", **options)
    assert tracks_weights(work) is weights
    pixels = math.prod(region_shape(task_grid_region(work, task)))
    accumulator, held = task_bytes(work, task)
    assert accumulator == held == 4 * pixels * (3 + weights)


def test_parts_kept_in_memory_get_what_the_region_budget_leaves(tmp_path):
    work, _ = _planned(tmp_path, "out.zarr")
    held = ex.largest_task_bytes(work)
    assert held < ex.REGION_MEMORY_BYTES - ex.MEMORY_PARTS_BYTES  # small tasks: the cap
    assert ex.memory_parts_bytes(work, 1) == ex.MEMORY_PARTS_BYTES
    crowded = (ex.REGION_MEMORY_BYTES - ex.MEMORY_PARTS_BYTES) // held + 1
    assert ex.memory_parts_bytes(work, crowded) == ex.REGION_MEMORY_BYTES - crowded * held
    full = ex.REGION_MEMORY_BYTES // held + 1  # the tasks in flight take it all
    assert ex.memory_parts_bytes(work, full) == 0


def test_parts_kept_on_disk_only_give_the_same_bytes(tmp_path, monkeypatch):
    path = write_tif(tmp_path / "in.tif", textured((200, 180), 1, seed=3), tile=None)
    model = pixel_model([[1.0], [-1.0]], [0.0, 0.5])
    settings = {"patch_size": 32, "overlap": 0.25, "chunk_size": 64, "device": "cpu"}
    found = []
    for name, budget in (("memory", ex.MEMORY_PARTS_BYTES), ("disk", 0)):
        monkeypatch.setattr(ex, "MEMORY_PARTS_BYTES", budget)
        out = tmp_path / f"{name}.zarr"
        segment(path, model, out, region_size=64, probabilities="float16", **settings)
        sink = ZarrSink.open(out)
        found.append((sink.labels_array()[...], sink.probabilities_array()[...]))
    np.testing.assert_array_equal(found[1][0], found[0][0])
    assert found[1][1].tobytes() == found[0][1].tobytes()
