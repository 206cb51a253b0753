"""Runs region tasks as a Dask graph: threaded scheduler or a dask.distributed cluster."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import dask.local
import dask.threaded
from dask.base import compute
from dask.callbacks import Callback
from dask.delayed import Delayed, delayed

from segflow.engine.grid import Index, clip, region_shape, union
from segflow.engine.placement import submit_tasks
from segflow.engine.region import (
    RegionStats,
    RegionWork,
    process_region,
    task_grid_region,
    task_indices,
    task_region,
    tracks_weights,
)
from segflow.engine.sharing import (
    MEMORY_PARTS_BYTES,
    HandoffPlan,
    plan_handoff,
    scratch_folder,
    sharing,
)
from segflow.errors import ConfigError

# (done, total): patches under the local schedulers, region tasks on a cluster
ProgressFn = Callable[[int, int], None]
TASK_PREFIX = "segflow-region"
# the accumulators of the region tasks in flight
REGION_MEMORY_BYTES = 256 * 2**20
# patches several regions touch are predicted once and handed on (see ``sharing``);
# False makes every task predict all it touches (the same bytes, more forwards)
HAND_ON_PATCHES = True
LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", None)


class _PatchProgress(Callback):
    """Counts blended patches under the local schedulers, topped up as each task ends.

    Patches, not region tasks: a small input is one or two regions, whose bar
    would otherwise sit at 0 until the end. A task's patches that were never
    blended (all nodata) count once the task ends.
    """

    # Callback.__init__ only stores hooks passed as arguments; this one is a method
    def __init__(self, work: RegionWork, tasks: list[Index], report: ProgressFn) -> None:
        self.expected = {
            task_key(t): len(work.grid.touching(task_grid_region(work, t))) for t in tasks
        }
        self.counted = dict.fromkeys(self.expected, 0)
        self.total = sum(self.expected.values())
        self.done = 0
        self.report = report
        self._lock = threading.Lock()

    def patches(self, task: Index, count: int) -> None:
        key = task_key(task)
        with self._lock:
            # never past the task's own share: its end tops it up exactly
            count = min(count, self.expected[key] - self.counted[key])
            self.counted[key] += count
            self.done += count
            self.report(self.done, self.total)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and name in self.expected:
            with self._lock:
                self.done += self.expected[name] - self.counted[name]
                self.counted[name] = self.expected[name]
                self.report(self.done, self.total)


def task_key(task: Index) -> str:
    return f"{TASK_PREFIX}-{'-'.join(map(str, task))}"


def build_tasks(
    work: RegionWork, tasks: list[Index], after: dict[Index, list[Index]] | None = None
) -> list[Delayed]:
    """One delayed task per region, each after the tasks whose patches it takes.

    The work description is one shared graph node. Tasks come in the order
    ``after`` was planned in, so every dependency is built before its users.
    """
    shared = delayed(work, traverse=False)
    run = delayed(process_region, pure=False)
    built: dict[Index, Delayed] = {}
    for task in tasks:
        first = [built[t] for t in (after or {}).get(task, [])]
        built[task] = run(shared, task, *first, dask_key_name=task_key(task))
    return [built[task] for task in tasks]


def execute(
    work: RegionWork,
    tasks: list[Index],
    *,
    scheduler: Any = "threads",
    workers: int | None = None,
    progress: ProgressFn | None = None,
    resources: dict[str, float] | None = None,
) -> RegionStats:
    """Run ``tasks`` and merge their statistics.

    ``scheduler`` is "threads" (default), "sync", a ``distributed.Client``, or a
    scheduler address such as "tcp://127.0.0.1:8786". ``resources`` (e.g.
    ``{"GPU": 1}``) is required of the cluster workers that run each task, so a
    GPU worker started with ``--resources GPU=1`` runs one model task at a time.
    It is passed at compute time: annotations can be lost in graph optimisation.
    A patch several tasks touch is predicted by one of them and handed on to
    the others through a scratch folder in the output store (see ``sharing``).
    """
    report = progress or (lambda done, total: None)
    report(0, len(tasks))
    total = RegionStats(class_counts=[0] * work.model.num_classes)
    if not tasks:
        return total
    if scheduler in LOCAL_SCHEDULERS:
        sync = scheduler in ("sync", "synchronous")
        in_flight = local_in_flight(work, 1 if sync else workers)
        with _shared_here(work, tasks, memory_parts_bytes(work, in_flight)) as shared:
            results = _run_local(shared, tasks, sync, in_flight, report)
    else:
        with _handoff(work, tasks) as (handed, plan):
            finished = _Finished(tasks, plan)
            after = plan.after if plan else {}
            results = _run_distributed(handed, tasks, after, scheduler, report, resources, finished)
    for result in results:
        total.merge(result)
    return total


@contextmanager
def _shared_here(work: RegionWork, tasks: list[Index], memory_bytes: int) -> Iterator[RegionWork]:
    """``work`` with this process's shared patches: claimed by whichever task reaches them first.

    Up to ``memory_bytes`` of handed-on parts stay in memory, the rest go to the scratch folder.
    """
    if not HAND_ON_PATCHES or len(tasks) < 2:
        yield work
        return
    regions = [task_grid_region(work, t) for t in tasks]  # the regions patches are blended on
    with (
        scratch_folder(work.sink.path) as folder,
        sharing(work.grid, regions, folder, memory_bytes) as key,
    ):
        yield dataclasses.replace(work, sharing_key=key)


@contextmanager
def _handoff(
    work: RegionWork, tasks: list[Index]
) -> Iterator[tuple[RegionWork, HandoffPlan | None]]:
    """``work`` with planned owners of the shared patches (and the plan), or unchanged.

    Cluster workers are other processes: each shared patch is predicted by its
    owner, which runs before the tasks that take it. Workers share no folder with a
    store in object storage, so there every task predicts what it touches.
    """
    if not HAND_ON_PATCHES or len(tasks) < 2 or not isinstance(work.sink.path, Path):
        yield work, None
        return
    regions = [task_grid_region(work, t) for t in tasks]  # the regions patches are blended on
    with scratch_folder(work.sink.path) as folder:
        plan = plan_handoff(work.grid, tasks, regions, folder)
        yield dataclasses.replace(work, handoff=plan.handoff), plan


class _Finished:
    """Frees the handed-on parts whose every user has finished, as tasks end."""

    def __init__(self, tasks: list[Index], plan: HandoffPlan | None) -> None:
        self._tasks = {task_key(t): t for t in tasks}
        self._plan = plan
        self._done: set[Index] = set()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> None:
        task = self._tasks.get(key)
        if task is None or self._plan is None:
            return
        with self._lock:
            self._done.add(task)
            self._plan.finished(self._done)


def _run_local(
    work: RegionWork, tasks: list[Index], sync: bool, in_flight: int, report: ProgressFn
) -> list[RegionStats]:
    """Run ``tasks`` in this process, ``in_flight`` at once (see ``local_in_flight``)."""
    # the same share of the cores however many tasks are left (a resume runs fewer)
    local = dataclasses.replace(work, task_threads=max(1, _cores() // in_flight))
    # the scheduler's function itself: named ones make dask import distributed
    # (half a second) to look for a default client first
    get = dask.local.get_sync if sync else dask.threaded.get
    counter = _PatchProgress(work, tasks, report)
    graph = build_tasks(dataclasses.replace(local, on_patches=counter.patches), tasks)
    with counter:
        results = compute(*graph, scheduler=get, num_workers=in_flight)  # type: ignore[no-untyped-call]
    return list(results)


def local_in_flight(work: RegionWork, workers: int | None = None) -> int:
    """Region tasks to run at once in this process.

    One task per core while their float32 accumulators fit REGION_MEMORY_BYTES.
    A 2048^2 region of 6 classes accumulates in 100 MB, so two run side by
    side; a 256^3 region of 3 classes needs 200 MB and runs alone (its forwards
    still use every core), which keeps peak memory flat as images and volumes
    grow. A resampled task also counts its read and its input-grid outputs
    (``task_bytes``). Planned over all the run's tasks, not only those left to
    do, so a resumed run splits the cores the same way.
    """
    if workers:
        return workers
    return max(1, min(_cores(), REGION_MEMORY_BYTES // largest_task_bytes(work)))


def largest_task_bytes(work: RegionWork) -> int:
    """All the largest task of the run holds at once (``task_bytes``), over every task."""
    every = task_indices(work)
    largest = max(every, key=lambda t: math.prod(region_shape(task_grid_region(work, t))))
    _, held = task_bytes(work, largest)
    return held


def memory_parts_bytes(work: RegionWork, in_flight: int) -> int:
    """The handed-on parts one process keeps in memory: what REGION_MEMORY_BYTES leaves.

    The tasks in flight come first; the parts get the rest of the same budget
    (at most MEMORY_PARTS_BYTES), and the others wait in the scratch folder (the
    page cache). A fixed share would raise the peak by that much as soon as an
    input is more than one region, so peak memory would grow with the input.
    """
    left = REGION_MEMORY_BYTES - in_flight * largest_task_bytes(work)
    return max(0, min(MEMORY_PARTS_BYTES, left))


def task_bytes(work: RegionWork, task: Index) -> tuple[int, int]:
    """The bytes of one task's accumulator, and of all it holds at once.

    The accumulator is its float32 class scores, and their weight sums when the
    task writes more than labels (``tracks_weights``). Without resampling both
    figures are the accumulator (the read is not counted). A resampled task
    also keeps its input read under the model-grid patches (with its mask), and
    its labels (and probabilities) on the input grid.
    """
    classes = work.model.num_classes
    grid_region = task_grid_region(work, task)
    accumulator = 4 * math.prod(region_shape(grid_region)) * (classes + int(tracks_weights(work)))
    if work.model_space is None:
        return accumulator, accumulator
    region = task_region(work, task)
    patches = union([work.grid.extent(p) for p in work.grid.touching(grid_region)])
    read = union([work.model_space.read_region(clip(patches, work.grid.shape)), region])
    read_bytes = math.prod(region_shape(read)) * (
        work.source.dtype.itemsize * work.source.channels + 1
    )
    output_bytes = math.prod(region_shape(region)) * (1 + 4 * classes * work.write_probabilities)
    return accumulator, accumulator + read_bytes + output_bytes


def _cores() -> int:
    return os.cpu_count() or 1


def _run_distributed(
    work: RegionWork,
    tasks: list[Index],
    after: dict[Index, list[Index]],
    scheduler: Any,
    report: ProgressFn,
    resources: dict[str, float] | None,
    finished: Callable[[str], None],
) -> list[RegionStats]:
    from distributed import Client, as_completed

    client_cm: AbstractContextManager[Any]
    if isinstance(scheduler, Client):
        client_cm = nullcontext(scheduler)
    elif isinstance(scheduler, str) and "://" in scheduler:
        try:
            client_cm = Client(scheduler, timeout="20s")  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    else:
        raise ConfigError(
            f"unknown scheduler {scheduler!r}: use 'threads', 'sync', a distributed.Client "
            "or a scheduler address like tcp://host:8786"
        )
    with client_cm as client:
        # the work sent to every worker first: else tasks that depend on each other share one
        futures = submit_tasks(
            client, process_region, work, tasks, after, key=task_key, resources=resources
        )
        results: list[RegionStats] = []
        completed = as_completed(futures)  # type: ignore[no-untyped-call]
        for done, future in enumerate(completed, start=1):
            results.append(future.result())
            finished(future.key)
            report(done, len(tasks))
        return results
