"""Patch predictions shared between the region tasks of one run in one process.

A patch of the global grid that straddles a region boundary is needed by
every region it touches. Without sharing, each of them predicts it again
(1.2x the forward work for 2048-pixel regions, 2-5x for small 3-D regions).
Here the first task to reach a patch predicts it and publishes the part the
other regions need; they take it instead of predicting it.

The result never depends on sharing: a published patch holds the very logits
its claimer predicted, and every task still adds its patches in global grid
order. What is kept is bounded by a byte budget; a patch that does not fit is
simply predicted again by the next task that needs it.

No task can wait forever. Tasks claim and wait for patches in the same global
order, and a claimer publishes a batch as soon as it is predicted, before it
waits for anything in it; a claimer that fails gives its claims back.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from segflow.engine.grid import Index, PatchGrid, Region, intersect, union
from segflow.heap import mapped_empty


@dataclass(frozen=True)
class SharedPatch:
    """Logits of the part of a patch other regions need: ``extent`` in image coordinates."""

    extent: Region
    logits: torch.Tensor  # ``(K, *extent)``, a view into ``slot``
    slot: torch.Tensor


class SharedPatches:
    """Claims, publishes and hands out the predictions of patches several regions touch."""

    def __init__(self, users: dict[Index, list[Region]], budget_bytes: int) -> None:
        # users: for every patch touched by more than one region, the regions that touch it
        self._users = users
        self._remaining = {index: len(regions) for index, regions in users.items()}
        self._budget = budget_bytes
        self._kept: dict[Index, SharedPatch] = {}
        self._claimed: dict[Index, object] = {}  # patch -> the task predicting it
        # kept logits live in whole-patch slots allocated once and reused: buffers
        # freed by one thread and allocated by another would fragment the heap
        self._pool: torch.Tensor | None = None
        self._free_slots: list[torch.Tensor] = []
        self._changed = threading.Condition()

    @property
    def slots(self) -> int:
        """Whole-patch slots the budget holds (0 until a patch is first kept)."""
        return 0 if self._pool is None else self._pool.shape[0]

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def is_shared(self, index: Index) -> bool:
        return index in self._users

    def claim(self, index: Index, owner: object) -> bool:
        """True when ``owner`` should predict ``index``: nobody kept it or is predicting it."""
        with self._changed:
            if index in self._kept or index in self._claimed:
                return False
            self._claimed[index] = owner
            return True

    def publish(self, index: Index, extent: Region, logits: torch.Tensor, region: Region) -> None:
        """Keep the part of a claimed patch's logits that regions other than ``region`` need."""
        with self._changed:
            self._claimed.pop(index, None)
            others = [r for r in self._users[index] if r != region]
            needed = [part for r in others if (part := intersect(extent, r)) is not None]
            # remaining counts the caller, which has not released the patch yet
            if needed and self._remaining[index] > 1 and index not in self._kept:
                box = union(needed)
                local = tuple(
                    slice(b.start - e.start, b.stop - e.start)
                    for b, e in zip(box, extent, strict=True)
                )
                slot = self._slot(logits)
                if slot is not None:  # over budget: the others predict it again
                    view = slot[(slice(None), *(slice(0, s.stop - s.start) for s in local))]
                    view.copy_(logits[(slice(None), *local)])
                    self._kept[index] = SharedPatch(box, view, slot)
            self._changed.notify_all()

    def _slot(self, logits: torch.Tensor) -> torch.Tensor | None:
        if self._pool is None:
            # one mapping for every slot, outside the heap (allocated mid-region, it
            # fragmented the heap), whose pages count only once a slot is first written
            slot_bytes = logits.numel() * logits.element_size()
            slots = self._budget // slot_bytes
            pool = torch.from_numpy(mapped_empty((max(1, slots) * slot_bytes,), np.uint8))
            self._pool = pool.view(logits.dtype).reshape(-1, *logits.shape)[:slots]
            self._free_slots = list(self._pool.unbind(0))[::-1]
        if not self._free_slots:
            return None
        return self._free_slots.pop()

    def take(self, index: Index, owner: object) -> SharedPatch | None:
        """The published part of ``index``, waiting while another task predicts it.

        None means it was not kept (over budget, or its claimer failed): the
        caller (``owner``) has now claimed it and predicts it itself.
        """
        with self._changed:
            while index in self._claimed:
                self._changed.wait()
            kept = self._kept.get(index)
            if kept is None:
                self._claimed[index] = owner
            return kept

    def release(self, index: Index) -> None:
        """One region is done with ``index``; the last one frees its slot."""
        with self._changed:
            self._remaining[index] -= 1
            if self._remaining[index] <= 0 and (kept := self._kept.pop(index, None)) is not None:
                self._free_slots.append(kept.slot)

    def give_back(self, owner: object) -> None:
        """Drop ``owner``'s unpublished claims (it failed): whoever waits on them predicts them."""
        with self._changed:
            for index in [i for i, o in self._claimed.items() if o is owner]:
                del self._claimed[index]
            self._changed.notify_all()


def patch_users(grid: PatchGrid, regions: Iterable[Region]) -> dict[Index, list[Region]]:
    """The regions touching each patch, for patches touched by more than one."""
    users: dict[Index, list[Region]] = defaultdict(list)
    for region in regions:
        for index in grid.touching(region):
            users[index].append(region)
    return {index: rs for index, rs in users.items() if len(rs) > 1}


_RUNS: dict[str, SharedPatches] = {}
_RUNS_LOCK = threading.Lock()


@contextmanager
def sharing(grid: PatchGrid, regions: Iterable[Region], budget_bytes: int) -> Iterator[str]:
    """Register a run's shared patches in this process; yields the key its tasks look up."""
    key = uuid.uuid4().hex
    with _RUNS_LOCK:
        _RUNS[key] = SharedPatches(patch_users(grid, regions), budget_bytes)
    try:
        yield key
    finally:
        with _RUNS_LOCK:
            _RUNS.pop(key, None)


def shared_patches(key: str | None) -> SharedPatches | None:
    """This process's shared patches for a run, or None (another process: predict everything)."""
    if not key:
        return None
    with _RUNS_LOCK:
        return _RUNS.get(key)
