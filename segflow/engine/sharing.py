"""Patches several region tasks touch: predicted once by one of them, handed on to the others.

A patch of the global grid that straddles a region boundary is needed by
every region it touches. One of them predicts it and saves the part the
other regions need to a scratch folder beside the run's completion record;
the others read that part back instead of predicting it. So every patch is
predicted once per run. Who predicts it:

- in one process (threads, sync): the first task to reach it claims it, and a
  task that reaches a patch another task claimed waits for its part
  (``SharedPatches``). Tasks run side by side as before; nobody waits forever,
  because every task claims and waits in the same global order and publishes
  a batch as soon as it is predicted, before it waits for anything in it (a
  task's unpublished claims always lie past the patch it blends);
- on a cluster: its owner, the first of its regions in task order; the others
  run after their owners (a Dask dependency) and read its part (``Handoff``).

The result never depends on it: a saved part holds the very float32 logits
its predictor made, and every task still adds its patches in global grid
order, so each pixel sums the same terms in the same order. Memory stays
bounded: in one process the first parts are kept as tensors, up to a budget
the run sets (what its region budget leaves after the tasks in flight, at most
MEMORY_PARTS_BYTES: see ``execute``; saving and loading parts cost about a
tenth of a 2-D run's CPU time), the rest live on disk (in the page cache, not
in a process). A part is dropped once the last of its regions is done with it, so
what is kept at a time is the boundary between finished and pending regions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from segflow.engine.grid import Index, PatchGrid, Region, intersect, union

SCRATCH_FOLDER = "_segflow/handoff"  # inside the output store; removed when the run ends
# parts one process keeps in memory before it writes them to the scratch folder
MEMORY_PARTS_BYTES = 128 * 2**20


@dataclass(frozen=True)
class SharedPatch:
    """Logits of the part of a patch other regions need: ``extent`` in patch-grid coordinates."""

    extent: Region
    logits: torch.Tensor  # ``(K, *extent)``


@dataclass(frozen=True, eq=False)
class Handoff:
    """Which task predicts each shared patch, the part others need, and where it is kept."""

    folder: Path
    owners: Mapping[Index, Index]  # shared patch -> the task that predicts it
    parts: Mapping[Index, Region]  # shared patch -> the part the other tasks need

    def predicts(self, patch: Index, task: Index) -> bool:
        """Whether ``task`` predicts ``patch``: it is not shared, or ``task`` owns it."""
        return self.owners.get(patch, task) == task

    def is_shared(self, patch: Index) -> bool:
        return patch in self.owners

    def path(self, patch: Index) -> Path:
        return part_path(self.folder, patch)

    def save(self, patch: Index, extent: Region, logits: torch.Tensor) -> None:
        """Keep the part of an owned patch's logits ``(K, *patch)`` the other tasks need."""
        save_part(self.path(patch), self.parts[patch], extent, logits)

    def load(self, patch: Index) -> SharedPatch | None:
        """The saved part of ``patch``, or None when its owner left none (predict it then)."""
        return load_part(self.path(patch), self.parts[patch])


def part_path(folder: Path, patch: Index) -> Path:
    return folder / ("p" + "_".join(map(str, patch)) + ".npy")


def _part_of(part: Region, extent: Region, logits: torch.Tensor) -> np.ndarray:
    """A copy of ``part`` of a patch's logits ``(K, *patch)`` placed at ``extent``."""
    local = tuple(
        slice(p.start - e.start, p.stop - e.start) for p, e in zip(part, extent, strict=True)
    )
    return np.array(logits[(slice(None), *local)].cpu().numpy(), order="C", copy=True)


def save_part(path: Path, part: Region, extent: Region, logits: torch.Tensor) -> None:
    """Write ``part`` of a patch's logits ``(K, *patch)`` placed at ``extent``, atomically."""
    save_values(path, _part_of(part, extent, logits))


def save_values(path: Path, values: np.ndarray) -> None:
    """Write a part's values atomically."""
    temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:  # a reader never sees half a file
            header = np.lib.format.header_data_from_array_1_0(values)
            np.lib.format.write_array_header_1_0(handle, header)
            # a plain write, not np.save's tofile: a full disk is then ENOSPC, with its errno
            handle.write(values.data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def load_part(path: Path, part: Region) -> SharedPatch | None:
    try:
        values = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    return SharedPatch(part, torch.from_numpy(values))


class SharedPatches:
    """Claims, publishes and hands out the patches several regions of one process touch."""

    def __init__(
        self,
        grid: PatchGrid,
        regions: Sequence[Region],
        folder: Path,
        memory_bytes: int = MEMORY_PARTS_BYTES,
    ) -> None:
        self._users = {
            patch: [regions[p] for p in positions]
            for patch, positions in patch_users(grid, regions).items()
        }
        self._remaining = {index: len(users) for index, users in self._users.items()}
        self._folder = folder
        self._kept: dict[Index, Region] = {}  # published patch -> its part (on disk or in memory)
        self._in_memory: dict[Index, SharedPatch] = {}
        self._memory_bytes = 0
        self._memory_budget = memory_bytes
        self._claimed: dict[Index, object] = {}  # patch -> the task predicting it
        self._changed = threading.Condition()

    def is_shared(self, index: Index) -> bool:
        return index in self._users

    @property
    def memory_bytes(self) -> int:
        """The bytes of the parts kept in memory now."""
        return self._memory_bytes

    def claim(self, index: Index, owner: object) -> bool:
        """True when ``owner`` should predict ``index``: nobody published or is predicting it."""
        with self._changed:
            if index in self._kept or index in self._claimed:
                return False
            self._claimed[index] = owner
            return True

    def publish(self, index: Index, extent: Region, logits: torch.Tensor, region: Region) -> None:
        """Save the part of a claimed patch's logits that regions other than ``region`` need."""
        needed = [
            part for r in self._users[index] if r != region and (part := intersect(extent, r))
        ]
        with self._changed:
            # remaining counts the caller, which has not released the patch yet
            keep = needed and self._remaining[index] > 1 and index not in self._kept
        if keep:  # written outside the lock: waiters wait on the claim, not the lock
            box = union(needed)
            values = _part_of(box, extent, logits)
            with self._changed:
                in_memory = self._memory_bytes + values.nbytes <= self._memory_budget
                if in_memory:
                    self._memory_bytes += values.nbytes
                    self._in_memory[index] = SharedPatch(box, torch.from_numpy(values))
            if not in_memory:
                save_values(part_path(self._folder, index), values)
        with self._changed:
            if keep:
                self._kept[index] = box
            self._claimed.pop(index, None)
            self._changed.notify_all()

    def take(self, index: Index, owner: object) -> SharedPatch | None:
        """The published part of ``index``, waiting while another task predicts it.

        None means it was not kept (its claimer failed): the caller (``owner``)
        has now claimed it and predicts it itself.
        """
        with self._changed:
            while index in self._claimed:
                self._changed.wait()
            box = self._kept.get(index)
            if box is None:
                self._claimed[index] = owner
                return None
            kept = self._in_memory.get(index)
        return kept or load_part(part_path(self._folder, index), box)

    def release(self, index: Index) -> None:
        """One region is done with ``index``; the last one deletes its part."""
        with self._changed:
            self._remaining[index] -= 1
            last = self._remaining[index] <= 0 and self._kept.pop(index, None) is not None
            kept = self._in_memory.pop(index, None) if last else None
            if kept is not None:
                self._memory_bytes -= kept.logits.numel() * kept.logits.element_size()
        if last and kept is None:
            part_path(self._folder, index).unlink(missing_ok=True)

    def give_back(self, owner: object) -> None:
        """Drop ``owner``'s unpublished claims (it failed): whoever waits on them predicts them."""
        with self._changed:
            for index in [i for i, o in self._claimed.items() if o is owner]:
                del self._claimed[index]
            self._changed.notify_all()


_RUNS: dict[str, SharedPatches] = {}
_RUNS_LOCK = threading.Lock()


@contextmanager
def sharing(
    grid: PatchGrid,
    regions: Sequence[Region],
    folder: Path,
    memory_bytes: int = MEMORY_PARTS_BYTES,
) -> Iterator[str]:
    """Register a run's shared patches in this process; yields the key its tasks look up.

    Up to ``memory_bytes`` of parts are kept in memory, the rest in ``folder``.
    """
    key = uuid.uuid4().hex
    with _RUNS_LOCK:
        _RUNS[key] = SharedPatches(grid, regions, folder, memory_bytes)
    try:
        yield key
    finally:
        with _RUNS_LOCK:
            _RUNS.pop(key, None)


def shared_patches(key: str | None) -> SharedPatches | None:
    """This process's shared patches for a run, or None (another process)."""
    if not key:
        return None
    with _RUNS_LOCK:
        return _RUNS.get(key)


class Exchange(Protocol):
    """One task's side of the handing on: what it predicts, publishes, takes and is done with."""

    def predicts(self, index: Index) -> bool: ...
    def publish(self, index: Index, extent: Region, logits: torch.Tensor) -> None: ...
    def take(self, index: Index) -> SharedPatch | None: ...
    def release(self, index: Index) -> None: ...
    def close(self) -> None: ...


class _LocalExchange:
    def __init__(self, shared: SharedPatches, region: Region) -> None:
        self._shared = shared
        self._region = region
        self._me = object()  # this task, as the owner of its claims

    def predicts(self, index: Index) -> bool:
        return not self._shared.is_shared(index) or self._shared.claim(index, self._me)

    def publish(self, index: Index, extent: Region, logits: torch.Tensor) -> None:
        if self._shared.is_shared(index):
            self._shared.publish(index, extent, logits, self._region)

    def take(self, index: Index) -> SharedPatch | None:
        return self._shared.take(index, self._me)

    def release(self, index: Index) -> None:
        if self._shared.is_shared(index):
            self._shared.release(index)

    def close(self) -> None:
        self._shared.give_back(self._me)


class _PlannedExchange:
    def __init__(self, handoff: Handoff, task: Index) -> None:
        self._handoff = handoff
        self._task = task

    def predicts(self, index: Index) -> bool:
        return self._handoff.predicts(index, self._task)

    def publish(self, index: Index, extent: Region, logits: torch.Tensor) -> None:
        if self._handoff.is_shared(index):
            self._handoff.save(index, extent, logits)

    def take(self, index: Index) -> SharedPatch | None:
        return self._handoff.load(index)

    def release(self, index: Index) -> None:
        """The run deletes a part once all its tasks have ended."""

    def close(self) -> None:
        """Nothing is claimed: owners are planned."""


def task_exchange(
    handoff: Handoff | None, sharing_key: str | None, task: Index, region: Region
) -> Exchange | None:
    """A task's exchange: planned (a cluster), claimed in this process, or None (no sharing)."""
    if handoff is not None:
        return _PlannedExchange(handoff, task)
    shared = shared_patches(sharing_key)
    return None if shared is None else _LocalExchange(shared, region)


def patch_users(grid: PatchGrid, regions: Iterable[Region]) -> dict[Index, list[int]]:
    """For every patch touched by more than one region, the positions of those regions."""
    users: dict[Index, list[int]] = defaultdict(list)
    for position, region in enumerate(regions):
        for index in grid.touching(region):
            users[index].append(position)
    return {index: us for index, us in users.items() if len(us) > 1}


@dataclass(frozen=True)
class HandoffPlan:
    """A run's handoff, the tasks each task waits for, and which files each task's end frees."""

    handoff: Handoff
    after: dict[Index, list[Index]]  # task -> the owners of the shared patches it takes
    users: dict[Index, list[Index]]  # shared patch -> its tasks

    def finished(self, done: set[Index]) -> None:
        """Delete the parts whose every user is in ``done``."""
        for patch, tasks in list(self.users.items()):
            if all(t in done for t in tasks):
                self.handoff.path(patch).unlink(missing_ok=True)
                del self.users[patch]


def plan_handoff(
    grid: PatchGrid, tasks: Sequence[Index], regions: Sequence[Region], folder: Path
) -> HandoffPlan:
    """Owners (the first user in task order), the parts to hand on, and task dependencies."""
    owners: dict[Index, Index] = {}
    parts: dict[Index, Region] = {}
    after: dict[Index, set[Index]] = {task: set() for task in tasks}
    users: dict[Index, list[Index]] = {}
    for patch, positions in patch_users(grid, regions).items():
        owner = tasks[positions[0]]
        extent = grid.extent(patch)
        needed = [intersect(extent, regions[p]) for p in positions[1:]]
        owners[patch] = owner
        parts[patch] = union([n for n in needed if n is not None])
        users[patch] = [tasks[p] for p in positions]
        for p in positions[1:]:
            after[tasks[p]].add(owner)
    handoff = Handoff(folder, owners, parts)
    return HandoffPlan(handoff, {t: sorted(a) for t, a in after.items()}, users)


@contextmanager
def scratch_folder(store: object) -> Iterator[Path]:
    """An empty scratch folder in ``store`` for one run, removed when the run ends.

    A folder left by a killed run is cleared first: the store's lock says no
    other run uses it. A store in object storage gets a local temporary folder
    instead (its parts are read back by this process's tasks only).
    """
    if isinstance(store, Path):
        folder = store.absolute() / SCRATCH_FOLDER  # the same path for cluster workers
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="segflow-handoff-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
