"""Patches several region tasks touch: predicted once by one of them, handed on to the others.

A patch of the global grid that straddles a region boundary is needed by
every region it touches. Each such patch gets an owner, the first of its
regions in task order. The owner predicts it and saves the part the other
regions need to a scratch folder beside the run's completion record; the
others run after their owners (a Dask dependency) and read that part back
instead of predicting it. So every patch is predicted once per run, on any
scheduler (threads, sync, a cluster whose workers see the output folder).

The result never depends on it: a saved part holds the very float32 logits
its owner predicted, and every task still adds its patches in global grid
order, so each pixel sums the same terms in the same order. Memory stays
bounded: the parts live on disk (in the page cache, not in a process), and
the run deletes each file once the last of its regions is done, so what is
kept at a time is the slab of boundaries between finished and pending tasks.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segflow.engine.grid import Index, PatchGrid, Region, intersect, union

SCRATCH_FOLDER = "_segflow/handoff"  # inside the output store; removed when the run ends


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
        return self.folder / ("p" + "_".join(map(str, patch)) + ".npy")

    def save(self, patch: Index, extent: Region, logits: torch.Tensor) -> None:
        """Keep the part of an owned patch's logits ``(K, *patch)`` the other tasks need."""
        part = self.parts[patch]
        local = tuple(
            slice(p.start - e.start, p.stop - e.start) for p, e in zip(part, extent, strict=True)
        )
        target = self.path(patch)
        temporary = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
        with open(temporary, "wb") as handle:  # a reader never sees half a file
            np.save(handle, np.ascontiguousarray(logits[(slice(None), *local)].cpu().numpy()))
        os.replace(temporary, target)

    def load(self, patch: Index) -> SharedPatch | None:
        """The saved part of ``patch``, or None when its owner left none (predict it then)."""
        try:
            values = np.load(self.path(patch), allow_pickle=False)
        except FileNotFoundError:
            return None
        return SharedPatch(self.parts[patch], torch.from_numpy(values))


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
def scratch_folder(store: Path) -> Iterator[Path]:
    """An empty scratch folder in ``store`` for one run, removed when the run ends.

    A folder left by a killed run is cleared first: the store's lock says no
    other run uses it.
    """
    folder = Path(store) / SCRATCH_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
