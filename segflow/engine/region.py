"""The work for one input: one task per output region that reads, predicts, blends, writes.

A task owns a block of whole storage chunks. It reads its region plus the
halo of every global-grid patch that touches it, predicts the patches in
batches (the next batch is cut and normalized in a background thread while
the model runs), blends them into a float32 accumulator and writes its chunks
whole, then records them as done. A patch a neighbouring task has already
predicted in this process is taken from it (see shared_patches). Patches are
visited in global order, so every pixel sums the same terms in the same order
whatever the chunking.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from segflow.engine.blend import Accumulator, BlendMode, patch_window
from segflow.engine.grid import (
    Index,
    PatchGrid,
    Region,
    chunk_grid_shape,
    chunk_region,
    clip,
    iter_chunks,
    region_shape,
    shift,
    union,
)
from segflow.engine.normalize import normalize
from segflow.engine.sharing import shared_patches
from segflow.heap import release_free_heap, tune_heap
from segflow.io.source import Source
from segflow.io.zarr_sink import ZarrSink
from segflow.models.meta import Normalization
from segflow.models.predictor import AxisOrder, Predictor, cached_predictor, model_cache_key


@dataclass(frozen=True)
class ModelHandle:
    """How a task gets its predictor: a model file loaded once per process."""

    path: Path | None
    sha256: str
    num_classes: int
    output_stride: int
    module: torch.nn.Module | None = None  # only for in-memory models (threaded runs, tests)

    def predictor(self, options: PredictorOptions) -> Predictor:
        # an in-memory module is only known by its identity (its sha256 may be a label)
        identity = id(self.module) if self.module is not None else None
        key = model_cache_key(
            self.path or Path("<memory>"), self.sha256, module=identity, **options.__dict__
        )

        def build() -> Predictor:
            module = self.module
            if module is None:
                from segflow.models import load_model

                assert self.path is not None
                module = load_model(self.path).module
            return Predictor(
                module,
                num_classes=self.num_classes,
                output_stride=self.output_stride,
                device=options.device,
                amp=options.amp,
                tta=options.tta,
                squeeze_axis=options.squeeze_axis,
                axis_order=options.axis_order,
                threads=options.threads,
            )

        return cached_predictor(key, build)


@dataclass(frozen=True)
class PredictorOptions:
    device: str = "auto"
    amp: bool = True
    tta: bool = False
    squeeze_axis: int | None = None
    axis_order: AxisOrder | None = None
    threads: int | None = None


@dataclass(frozen=True)
class RegionWork:
    """Everything a region task needs; pickled once per Dask worker."""

    source: Source
    sink: ZarrSink
    model: ModelHandle
    predictor_options: PredictorOptions
    grid: PatchGrid
    normalization: Normalization | None
    blend: BlendMode
    sigma: float
    batch_size: int
    task_chunks: tuple[int, ...]  # storage chunks per task, per axis
    write_labels: bool
    write_probabilities: bool
    # set for local runs by execute(): cores for a task's own elementwise work (a
    # forward takes its own share), and the key of the run's shared patches
    task_threads: int = 1
    sharing_key: str | None = None


@dataclass
class RegionStats:
    chunks_written: int = 0
    valid_pixels: int = 0
    patches_predicted: int = 0
    patches_skipped: int = 0
    class_counts: list[int] = field(default_factory=list)

    def merge(self, other: RegionStats) -> None:
        self.chunks_written += other.chunks_written
        self.valid_pixels += other.valid_pixels
        self.patches_predicted += other.patches_predicted
        self.patches_skipped += other.patches_skipped
        if not self.class_counts:
            self.class_counts = list(other.class_counts)
        elif other.class_counts:
            self.class_counts = [
                a + b for a, b in zip(self.class_counts, other.class_counts, strict=True)
            ]


def task_indices(work: RegionWork) -> list[Index]:
    """Task grid: blocks of ``task_chunks`` storage chunks."""
    chunks = work.sink.chunk_grid_shape
    return list(iter_chunks(chunks, work.task_chunks))


def task_chunk_indices(work: RegionWork, task: Index) -> list[Index]:
    grid = work.sink.chunk_grid_shape
    ranges = [
        range(t * n, min((t + 1) * n, g))
        for t, n, g in zip(task, work.task_chunks, grid, strict=True)
    ]
    return list(itertools.product(*ranges))


def pending_tasks(work: RegionWork) -> list[Index]:
    """Tasks with at least one chunk not yet recorded as done (resume)."""
    done = work.sink.done_chunks()
    return [
        t for t in task_indices(work) if any(c not in done for c in task_chunk_indices(work, t))
    ]


def task_region(work: RegionWork, task: Index) -> Region:
    chunk_shape = work.sink.layout.chunk_shape
    block = tuple(c * n for c, n in zip(chunk_shape, work.task_chunks, strict=True))
    return chunk_region(task, work.grid.shape, block)


def process_region(work: RegionWork, task: Index) -> RegionStats:
    """Read, predict, blend and write every chunk of one task."""
    # this thread's elementwise work runs on its share of the cores: OpenMP teams
    # that compete for the same cores slow every op down several times
    torch.set_num_threads(work.task_threads)
    tune_heap()  # once per process: also in Dask worker processes
    region = task_region(work, task)
    stats = RegionStats(class_counts=[0] * work.model.num_classes)
    patches = work.grid.touching(region)
    extents = [work.grid.extent(p) for p in patches]
    read_region = clip(union(extents), work.grid.shape)
    raw = work.source.read(read_region)
    read_origin = tuple(s.start for s in read_region)
    valid = raw.valid
    region_valid = valid[shift(region, read_origin)]

    accumulator = Accumulator(
        work.model.num_classes, region, track_weights=work.write_probabilities
    )
    if region_valid.any():
        todo: list[tuple[Index, Region]] = []
        for index, extent in zip(patches, extents, strict=True):
            inside = shift(clip(extent, work.grid.shape), read_origin)
            if valid[inside].any():
                todo.append((index, extent))
            else:
                stats.patches_skipped += 1  # entirely nodata: not computed
        cut = functools.partial(_patch_batch, raw.data, valid, read_origin, work)
        buffers = BatchBuffers((work.batch_size, raw.data.shape[0], *work.grid.patch))
        _predict_and_blend(work, region, cut, buffers, todo, accumulator, stats)
        del cut, buffers
    # kept past the read buffer only where it says something
    invalid = None if region_valid.all() else ~region_valid
    del raw, valid, region_valid

    labels = accumulator.labels(work.sink.label_dtype)
    if invalid is not None:
        labels[invalid] = work.sink.label_nodata
    probabilities = None
    if work.write_probabilities:
        probabilities = accumulator.probabilities()
        if invalid is not None:
            probabilities[:, invalid] = np.nan

    origin = tuple(s.start for s in region)
    done = work.sink.done_chunks()
    for chunk in task_chunk_indices(work, task):
        if chunk in done:
            continue
        local = shift(work.sink.chunk_region(chunk), origin)
        work.sink.write_chunk(
            chunk,
            labels[local] if work.write_labels else None,
            probabilities[(slice(None), *local)] if probabilities is not None else None,
        )
        stats.chunks_written += 1
    stats.valid_pixels = labels.size - (
        int(np.count_nonzero(invalid)) if invalid is not None else 0
    )
    stats.class_counts = class_counts(labels, work.model.num_classes)
    del labels, probabilities
    release_free_heap()
    return stats


COUNT_BLOCK = 2**20


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Pixels per class; nodata (the dtype's largest value) lands in a bin past the classes.

    Counted a block at a time: bincount copies its input to int64, 128 MB for
    the labels of one 256^3 region.
    """
    counts = np.zeros(num_classes, np.int64)
    flat = labels.reshape(-1)
    for start in range(0, flat.size, COUNT_BLOCK):
        block = np.bincount(flat[start : start + COUNT_BLOCK], minlength=num_classes)
        counts += block[:num_classes]
    return [int(c) for c in counts]


def _predict_and_blend(
    work: RegionWork,
    region: Region,
    cut: Callable[..., torch.Tensor],
    buffers: BatchBuffers,
    todo: list[tuple[Index, Region]],
    accumulator: Accumulator,
    stats: RegionStats,
) -> None:
    """Predict (or take from a neighbour) every patch in ``todo`` and blend it in grid order."""
    predictor = work.model.predictor(work.predictor_options)
    shared = shared_patches(work.sharing_key)
    me = object()  # this task, as the owner of its claims

    def predict_here(index: Index) -> bool:
        return shared is None or not shared.is_shared(index) or shared.claim(index, me)

    def predict(extents: list[Region]) -> torch.Tensor:
        stats.patches_predicted += len(extents)
        return predictor(cut(extents))

    try:
        cut_into_buffer = functools.partial(cut, buffers=buffers)
        batches = _batches(cut_into_buffer, todo, work.batch_size, predict_here)
        for items, batch in _prefetch(batches):
            predicted: dict[Index, torch.Tensor] = {}
            if batch is not None:
                stats.patches_predicted += len(batch)
                own = [(index, extent) for index, extent, here in items if here]
                for (index, extent), logits in zip(own, predictor(batch), strict=True):
                    predicted[index] = logits
                    # publish before waiting on anything: a neighbour may be waiting for it
                    if shared is not None and shared.is_shared(index):
                        shared.publish(index, extent, logits, region)
            for index, extent, here in items:
                window = patch_window(work.blend, work.grid, index, work.sigma)
                if here:
                    accumulator.add(predicted.pop(index), extent, window)
                else:
                    assert shared is not None
                    part = shared.take(index, me)
                    if part is None:  # its claimer did not keep it: predict it here
                        logits = predict([extent])[0]
                        shared.publish(index, extent, logits, region)
                        accumulator.add(logits, extent, window)
                    else:
                        corner = tuple(s.start for s in extent)
                        accumulator.add(
                            part.logits, part.extent, window[shift(part.extent, corner)]
                        )
                if shared is not None and shared.is_shared(index):
                    shared.release(index)
            if batch is not None:  # blended: the logits may have been views of it
                buffers.give_back(batch)
    finally:
        if shared is not None:
            shared.give_back(me)


Batch = tuple[list[tuple[Index, Region, bool]], torch.Tensor | None]


def _batches(
    cut: Callable[[list[Region]], torch.Tensor],
    todo: list[tuple[Index, Region]],
    batch_size: int,
    predict_here: Callable[[Index], bool],
) -> Iterator[Batch]:
    """Group ``todo`` in grid order; each group's tensor holds the patches this task predicts.

    A group closes once it holds ``batch_size`` patches to predict, so the
    patches another task predicts ride along without a forward of their own.
    """
    items: list[tuple[Index, Region, bool]] = []
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


def _patch_batch(
    raw: np.ndarray,
    valid: np.ndarray,
    origin: Sequence[int],
    work: RegionWork,
    extents: list[Region],
    buffers: BatchBuffers | None = None,
) -> torch.Tensor:
    """Cut patches out of the raw read buffer and normalize them; zero-pad past the image edge.

    Normalizing patch by patch, rather than the whole read region at once,
    saves a float32 copy of the region (about 90 MB for 2048-pixel regions of
    three bands) for a fraction more arithmetic, done while the model runs.
    The batch is a reused buffer when ``buffers`` is given.
    """
    grid = work.grid
    shape = (len(extents), raw.shape[0], *grid.patch)
    batch = buffers.take(len(extents)) if buffers else torch.empty(shape, dtype=torch.float32)
    for n, extent in enumerate(extents):
        inside = clip(extent, grid.shape)
        if inside != extent:  # the patch passes the image edge: pad with zeros
            batch[n].zero_()
        src = shift(inside, origin)
        dst = shift(inside, tuple(s.start for s in extent))
        target: tuple[int | slice, ...] = (n, slice(None), *dst)
        normalize(raw[(slice(None), *src)], valid[src], work.normalization, out=batch[target])
    return batch


class BatchBuffers:
    """Input batches a task reuses rather than allocating one per batch.

    A fresh batch (6 MB for two 512^2 patches of three bands) often came from
    new heap pages: about a third of a run's page faults. The prefetch thread
    fills one while another waits in the queue and a third is in the forward,
    so a task holds three; ``take`` allocates one more only if none is free.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self._shape = shape
        self._free: list[torch.Tensor] = []
        self._lent: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def take(self, patches: int) -> torch.Tensor:
        """A batch of ``patches`` patches, contents undefined."""
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None:
            buffer = torch.empty(self._shape, dtype=torch.float32)
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


def _prefetch(batches: Iterator[Batch], depth: int = 1) -> Iterator[Batch]:
    """Assemble the next batches in a background thread while the model runs."""
    q: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=depth)
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


def default_task_chunks(chunk_shape: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    """Storage chunks per task so a task region is about ``target`` (fewer halo re-reads)."""
    return tuple(max(1, t // c) for c, t in zip(chunk_shape, target, strict=True))


__all__ = [
    "ModelHandle",
    "PredictorOptions",
    "RegionStats",
    "RegionWork",
    "chunk_grid_shape",
    "pending_tasks",
    "process_region",
    "region_shape",
    "task_indices",
]
