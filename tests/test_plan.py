"""The plan of a run: default region sizes and batch sizes."""

from __future__ import annotations

import pytest

from segflow.engine.execute import REGION_MEMORY_BYTES
from segflow.plan import (
    GPU_BATCH_SIZE,
    TASK_TARGET_2D,
    TASK_TARGET_3D,
    auto_batch_size,
    default_region_size,
)


@pytest.mark.parametrize(
    ("dims", "classes", "probabilities", "edge"),
    [(2, 6, False, TASK_TARGET_2D), (3, 3, False, TASK_TARGET_3D), (3, 3, True, TASK_TARGET_3D)],
)
def test_default_regions_are_the_targets_for_few_classes(dims, classes, probabilities, edge):
    assert default_region_size(dims, classes, probabilities) == edge


@pytest.mark.parametrize(("dims", "classes"), [(3, 14), (3, 105), (2, 120)])
def test_default_regions_shrink_so_an_accumulator_fits_the_budget(dims, classes):
    edge = default_region_size(dims, classes, probabilities=True)
    target = TASK_TARGET_3D if dims == 3 else TASK_TARGET_2D
    assert edge < target
    assert 4 * (classes + 1) * edge**dims <= REGION_MEMORY_BYTES
    assert 4 * (classes + 1) * (edge + 1) ** dims > REGION_MEMORY_BYTES  # the largest that fits


def test_cpu_batches_keep_their_logits_small_and_gpus_get_full_batches():
    assert auto_batch_size("cpu", 6, (512, 512)) == 2  # 6 MB of logits per patch
    assert auto_batch_size("cpu", 2, (16, 16)) == GPU_BATCH_SIZE  # tiny patches: the cap
    assert auto_batch_size("cpu", 100, (96, 96, 96)) == 1  # never zero
