"""Batch assembly for a region task: group patches, cut them into reused buffers, prefetch.

Patches are grouped in grid order; a group's tensor holds only the patches the
task predicts itself (those a neighbouring task predicts ride along). The next
batch is cut and normalized in a background thread while the model runs, and
the last one is blended in another (``Behind``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from segflow.engine.grid import Index, PatchGrid, Region, clip, shift
from segflow.engine.normalize import normalize
from segflow.engine.resample import ModelSpace
from segflow.models.meta import Normalization

# (index, extent, predicted by this task) per patch, and the tensor of those this task predicts
BatchItem = tuple[Index, Region, bool]
Batch = tuple[list[BatchItem], torch.Tensor | None]
CutFn = Callable[[list[Region]], torch.Tensor]
T = TypeVar("T")


def group_batches(
    cut: CutFn,
    todo: list[tuple[Index, Region]],
    batch_size: int,
    predict_here: Callable[[Index], bool],
) -> Iterator[Batch]:
    """Group ``todo`` in grid order; each group's tensor holds the patches this task predicts.

    A group closes once it holds ``batch_size`` patches to predict, so the
    patches another task predicts ride along without a forward of their own.
    """
    items: list[BatchItem] = []
    count = 0
    for index, extent in todo:
        here = predict_here(index)
        items.append((index, extent, here))
        count += here
        if count == batch_size:
            yield items, cut([e for _, e, h in items if h])
            items, count = [], 0
    if items:
        own = [e for _, e, h in items if h]
        yield items, cut(own) if own else None


def cut_patches(
    raw: npt.NDArray[np.generic],
    valid: npt.NDArray[np.bool_],
    origin: Sequence[int],
    grid: PatchGrid,
    normalization: Normalization | None,
    extents: list[Region],
    buffers: BatchBuffers | None = None,
) -> torch.Tensor:
    """Cut patches out of the raw read buffer and normalize them; zero-pad past the image edge.

    Normalizing patch by patch, rather than the whole read region at once,
    saves a float32 copy of the region (about 90 MB for 2048-pixel regions of
    three bands) for a fraction more arithmetic, done while the model runs.
    The batch is a reused buffer when ``buffers`` is given.
    """
    shape = (len(extents), raw.shape[0], *grid.patch)
    batch = buffers.take(len(extents)) if buffers else torch.empty(shape, dtype=torch.float32)
    for n, extent in enumerate(extents):
        inside = clip(extent, grid.shape)
        if inside != extent:  # the patch passes the image edge: pad with zeros
            batch[n].zero_()
        src = shift(inside, origin)
        dst = shift(inside, tuple(s.start for s in extent))
        target: tuple[int | slice, ...] = (n, slice(None), *dst)
        normalize(raw[(slice(None), *src)], valid[src], normalization, out=batch[target])
    return batch


def cut_resampled_patches(
    raw: npt.NDArray[np.generic],
    valid: npt.NDArray[np.bool_],
    origin: Sequence[int],
    grid: PatchGrid,
    normalization: Normalization | None,
    space: ModelSpace,
    extents: list[Region],
    buffers: BatchBuffers | None = None,
) -> torch.Tensor:
    """Patches of the model grid: each cut from the input it reads, normalized, resampled.

    A patch reads the same input samples through the same global tables in any
    region, so it is the same tensor wherever it is cut (see ``resample``).
    """
    shape = (len(extents), raw.shape[0], *grid.patch)
    batch = buffers.take(len(extents)) if buffers else torch.empty(shape, dtype=torch.float32)
    for n, extent in enumerate(extents):
        inside = clip(extent, grid.shape)
        if inside != extent:  # the patch passes the model grid's edge: pad with zeros
            batch[n].zero_()
        support = space.input_support(inside)
        src = shift(support, origin)
        values = normalize(raw[(slice(None), *src)], valid[src], normalization)
        start = tuple(s.start for s in support)
        dst = shift(inside, tuple(s.start for s in extent))
        target: tuple[int | slice, ...] = (n, slice(None), *dst)
        batch[target] = space.to_model(torch.from_numpy(values), start, inside)
    return batch


class BatchBuffers:
    """Input batches a task reuses rather than allocating one per batch.

    A fresh batch (6 MB for two 512^2 patches of three bands) often came from
    new heap pages: about a third of a run's page faults. The prefetch thread
    fills one while another waits in the queue and a third is in the forward,
    so a task holds three; ``take`` allocates one more only if none is free.
    """

    def __init__(self, shape: tuple[int, ...], *, pinned: bool = False) -> None:
        self._shape = shape
        self._pinned = pinned  # page-locked, for asynchronous copies to a GPU
        self._free: list[torch.Tensor] = []
        self._lent: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def take(self, patches: int) -> torch.Tensor:
        """A batch of ``patches`` patches, contents undefined."""
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None:
            buffer = torch.empty(self._shape, dtype=torch.float32, pin_memory=self._pinned)
        batch = buffer[:patches]
        with self._lock:
            self._lent[batch.data_ptr()] = buffer
        return batch

    def give_back(self, batch: torch.Tensor) -> None:
        """``batch`` (from ``take``) is no longer used."""
        with self._lock:
            buffer = self._lent.pop(batch.data_ptr(), None)
            if buffer is not None:
                self._free.append(buffer)


def prefetch(batches: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Assemble the next batches in a background thread while the model runs."""
    q: queue.Queue[T | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        # one core: cutting patches is light, and a second OpenMP team here would
        # fight the forward pass's team for the same cores
        torch.set_num_threads(1)
        try:
            for item in batches:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)
            return
        q.put(None)

    thread = threading.Thread(target=produce, name="segflow-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)


class Behind(Generic[T]):
    """Runs ``work`` on items in order in one background thread, at most ``depth`` waiting.

    Blending a batch here while the next one is in the forward keeps the device
    (or the forward's cores) from waiting on the blend; the order of the items,
    and so the order every pixel sums its patches in, is kept.
    """

    def __init__(self, work: Callable[[T], None], depth: int = 2, threads: int = 1) -> None:
        self._work = work
        self._threads = threads
        self._queue: queue.Queue[tuple[T] | None] = queue.Queue(maxsize=depth)
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="segflow-blend", daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Queue ``item`` (waits while ``depth`` are waiting); raises what the worker raised."""
        self._raise_failure()
        self._queue.put((item,))

    def close(self) -> None:
        """Wait for every queued item; raises what the worker raised."""
        self._queue.put(None)
        self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _run(self) -> None:
        torch.set_num_threads(self._threads)  # per calling thread under OpenMP
        while (entry := self._queue.get()) is not None:
            if self._failed is None:  # after a failure, drain so the producer never blocks
                try:
                    self._work(entry[0])
                except BaseException as exc:  # handed to the producer, re-raised there
                    self._failed = exc
