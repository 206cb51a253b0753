"""Per-process resources of flow runs: the LocalCluster a run starts."""

from __future__ import annotations

import os

from flows.runtime import dask_scheduler, scheduler_for_task
from segflow.heap import heap_environment
from segflow.spec import DaskSpec


def _heap_variables() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in heap_environment()}


def test_local_cluster_workers_start_with_the_engines_heap_settings():
    with dask_scheduler(DaskSpec(scheduler="local", workers=1)) as address:
        client = scheduler_for_task(address)
        [worker_environment] = client.run(_heap_variables).values()
    assert worker_environment == heap_environment()
