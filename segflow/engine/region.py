"""The work for one input: one task per output region that reads, predicts, blends, writes.

A task owns a block of whole storage chunks. It reads its region plus the
halo of every global-grid patch that touches it, predicts the patches in
batches (the next batch is cut and normalized in a background thread while
the model runs, and the device runs the batches of the task that started
first: see ``device_queue``), blends them into a float32 accumulator and writes its chunks
whole, then records them as done (batch assembly is in ``batches``). A patch
that also touches an earlier task's region was predicted by that task, which
ran first, and is read back from the run's scratch folder (see ``sharing``). Patches are visited in global order, so every pixel sums
the same terms in the same order whatever the chunking.

When the model was trained at another spacing, the patch grid lives on the
model grid: a task predicts and blends the model-grid box its region needs and
resamples the blended probabilities back to its region (see ``resample``).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from segflow.engine.batches import (
    BatchBuffers,
    cut_patches,
    cut_resampled_patches,
)
from segflow.engine.blend import Accumulator, class_probabilities
from segflow.engine.ensemble import EnsemblePredictor
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
from segflow.engine.patch_pipeline import Blender, RegionPredictor, predict_and_blend
from segflow.engine.resample import ModelSpace, scores_labels
from segflow.engine.sharing import Handoff, task_exchange
from segflow.engine.uncertainty import NODATA as UNCERTAINTY_NODATA
from segflow.engine.uncertainty import blend_uncertainty, probabilities_uncertainty
from segflow.heap import release_free_heap
from segflow.io.orientation import AxisTransform
from segflow.io.source import ReadResult, Source
from segflow.io.zarr_sink import ZarrSink
from segflow.models.meta import Normalization
from segflow.models.predictor import Predictor, cached_predictor, model_cache_key
from segflow.options import BlendMode


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
    axis_order: AxisTransform | None = None
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
    model_space: ModelSpace | None = None  # set when the grid is the model's, not the input's
    write_uncertainty: bool = False  # the blend's normalized entropy (see ``uncertainty``)
    # an ensemble: every member predicts each patch and their probabilities are averaged
    # (``model`` is then the first member); empty for one model
    members: tuple[ModelHandle, ...] = ()
    member_weights: tuple[float, ...] = ()
    # set by execute(): cores for a task's own elementwise work (a forward takes its
    # own share), and who predicts each patch several tasks touch: planned owners on
    # a cluster, or the key of this process's shared patches (see ``sharing``)
    task_threads: int = 1
    handoff: Handoff | None = None
    sharing_key: str | None = None
    # set by execute() under the local schedulers: told (task, patches) as each batch is
    # blended, so the progress of an input of one or two regions moves as it runs
    on_patches: Callable[[Index, int], None] | None = None


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
    return chunk_region(task, work.sink.layout.spatial_shape, block)


def task_grid_region(work: RegionWork, task: Index) -> Region:
    """The patch-grid box a task blends: its region, or the model-grid box it reads back."""
    region = task_region(work, task)
    return region if work.model_space is None else work.model_space.grid_region(region)


def process_region(work: RegionWork, task: Index, *after: object) -> RegionStats:
    """Read, predict, blend and write every chunk of one task.

    ``after``: the results of the tasks that predict patches this one takes
    (only there so a scheduler runs those first).
    """
    # this thread's elementwise work runs on its share of the cores: OpenMP teams
    # that compete for the same cores slow every op down several times
    torch.set_num_threads(work.task_threads)
    region = task_region(work, task)
    stats = RegionStats(class_counts=[0] * work.model.num_classes)
    accumulator, invalid = _predict_region(work, task, region, stats)
    labels, probabilities, uncertainty = _region_outputs(work, region, accumulator, invalid)
    stats.chunks_written = _write_chunks(work, task, region, labels, probabilities, uncertainty)
    stats.valid_pixels = labels.size - (
        int(np.count_nonzero(invalid)) if invalid is not None else 0
    )
    stats.class_counts = class_counts(labels, work.model.num_classes)
    del labels, probabilities, uncertainty
    release_free_heap()
    return stats


@dataclass(frozen=True)
class _RegionRead:
    """The input under a region's patches, and where it is valid on the patch grid."""

    raw: ReadResult
    origin: Index  # of the read, in input coordinates
    grid_valid: npt.NDArray[np.bool_]  # on the patch grid (the read's own mask without resampling)
    grid_origin: Index


def _read_under(work: RegionWork, region: Region, extents: list[Region]) -> _RegionRead:
    """Read the input every patch in ``extents`` needs (and ``region`` itself)."""
    box = clip(union(extents), work.grid.shape)
    space = work.model_space
    if space is None:
        raw = work.source.read(box)
        origin = tuple(s.start for s in box)
        return _RegionRead(raw, origin, raw.valid, origin)
    read_region = union([space.read_region(box), region])
    raw = work.source.read(read_region)
    origin = tuple(s.start for s in read_region)
    grid_valid = space.grid_validity(raw.valid, origin, box)
    return _RegionRead(raw, origin, grid_valid, tuple(s.start for s in box))


def _predict_region(
    work: RegionWork, task: Index, region: Region, stats: RegionStats
) -> tuple[Accumulator, npt.NDArray[np.bool_] | None]:
    """Read ``region`` with its patches' halo, predict and blend it.

    Returns the blend (over the region's model-grid box when resampling) and the
    region's nodata mask (None where all is valid); the read buffer is freed on
    return, before labels are made.
    """
    space = work.model_space
    grid_region = region if space is None else space.grid_region(region)
    patches = work.grid.touching(grid_region)
    extents = [work.grid.extent(p) for p in patches]
    read = _read_under(work, region, extents)
    region_valid = read.raw.valid[shift(region, read.origin)]

    ensemble = bool(work.members)
    track_weights = tracks_weights(work)
    predictor = region_predictor(work)
    device = blend_device(predictor)
    accumulator = Accumulator(
        work.model.num_classes,
        grid_region,
        track_weights=track_weights,
        scores="probabilities" if ensemble else "logits",
        device=device,
    )
    if region_valid.any():
        todo = _patches_with_data(work, patches, extents, read.grid_valid, read.grid_origin, stats)
        cut = _patch_cutter(work, read)
        # pinned batches copy to a GPU asynchronously
        shape = (work.batch_size, read.raw.data.shape[0], *work.grid.patch)
        buffers = BatchBuffers(shape, pinned=device.type == "cuda")
        exchange = task_exchange(work.handoff, work.sharing_key, task, grid_region)
        blender = Blender(work, exchange, cut, predictor, accumulator, stats)
        if work.on_patches is not None:
            blender.on_blended = functools.partial(work.on_patches, task)
        try:
            predict_and_blend(work, blender, buffers, todo)
        finally:
            if exchange is not None:
                exchange.close()
    # kept past the read buffer only where it says something
    invalid = None if region_valid.all() else ~region_valid
    return accumulator, invalid


def tracks_weights(work: RegionWork) -> bool:
    """Whether a task's blend keeps its weight sums beside the class scores.

    Everything but labels needs the normalized blend: probabilities, their
    uncertainty, an ensemble's mean and resampling back (as probabilities).
    """
    return (
        work.write_probabilities
        or work.write_uncertainty
        or work.model_space is not None
        or bool(work.members)
    )


def _patch_cutter(work: RegionWork, read: _RegionRead) -> Callable[..., torch.Tensor]:
    raw = read.raw
    if work.model_space is None:
        return functools.partial(
            cut_patches, raw.data, raw.valid, read.origin, work.grid, work.normalization
        )
    return functools.partial(
        cut_resampled_patches,
        raw.data,
        raw.valid,
        read.origin,
        work.grid,
        work.normalization,
        work.model_space,
    )


def _patches_with_data(
    work: RegionWork,
    patches: list[Index],
    extents: list[Region],
    valid: npt.NDArray[np.bool_],
    read_origin: Index,
    stats: RegionStats,
) -> list[tuple[Index, Region]]:
    """The patches with a valid pixel; those entirely nodata are counted and not computed."""
    todo: list[tuple[Index, Region]] = []
    for index, extent in zip(patches, extents, strict=True):
        inside = shift(clip(extent, work.grid.shape), read_origin)
        if valid[inside].any():
            todo.append((index, extent))
        else:
            stats.patches_skipped += 1
    return todo


_Outputs = tuple[
    npt.NDArray[np.integer], npt.NDArray[np.floating] | None, npt.NDArray[np.uint8] | None
]


def _region_outputs(
    work: RegionWork,
    region: Region,
    accumulator: Accumulator,
    invalid: npt.NDArray[np.bool_] | None,
) -> _Outputs:
    """Labels (probabilities, uncertainty when written) of the region, nodata where invalid."""
    probabilities = uncertainty = None
    if work.model_space is None:
        labels = accumulator.labels(work.sink.label_dtype)
        if work.write_probabilities:
            probabilities = accumulator.probabilities()
        if work.write_uncertainty:  # from the blend, slab by slab: no second float copy
            uncertainty = blend_uncertainty(accumulator)
    else:
        labels, probabilities, uncertainty = _resampled_outputs(
            work, work.model_space, accumulator, region
        )
    if invalid is not None:
        labels[invalid] = work.sink.label_nodata
        if probabilities is not None:
            probabilities[:, invalid] = np.nan
        if uncertainty is not None:
            uncertainty[invalid] = UNCERTAINTY_NODATA
    return labels, probabilities, uncertainty


RESAMPLE_SLAB_BYTES = 16 * 2**20  # the class scores of one slab of a region resampled back


def _resampled_outputs(
    work: RegionWork, space: ModelSpace, accumulator: Accumulator, region: Region
) -> _Outputs:
    """Labels (probabilities, uncertainty) of ``region`` from the blend's probabilities on the
    model grid (the uncertainty is that of the probabilities resampled back).

    A slab of the first axis at a time: the blend of the model-grid box the slab
    reads is normalized and resampled back where the blend lives (on a GPU, the
    device), and only the slab's labels (and probabilities) come back. A
    sample's value is the same in any window (see ``resample``), and neither a
    float copy of the whole blend (a 256^3 region of three classes: 60 MB, 180
    MB with its softmax's temporaries) nor the scores of the whole region are made.
    """
    shape = region_shape(region)
    classes = accumulator.logits.shape[0]
    labels = np.empty(shape, dtype=work.sink.label_dtype)
    probabilities = (
        np.empty((classes, *shape), dtype=np.float32) if work.write_probabilities else None
    )
    uncertainty = np.empty(shape, dtype=np.uint8) if work.write_uncertainty else None
    rows = max(1, RESAMPLE_SLAB_BYTES // (4 * classes * max(1, math.prod(shape[1:]))))
    first = region[0]
    for start in range(first.start, first.stop, rows):
        slab = (slice(start, min(start + rows, first.stop)), *region[1:])
        box = space.grid_region(slab)
        blended = blend_probabilities(accumulator, shift(box, accumulator.origin))
        scores = space.to_input(blended, tuple(b.start for b in box), slab)
        del blended
        rows_here = slice(slab[0].start - first.start, slab[0].stop - first.start)
        labels[rows_here] = scores_labels(scores).cpu().numpy()
        if probabilities is None and uncertainty is None:
            continue
        on_host = scores.cpu()
        if probabilities is not None:
            probabilities[:, rows_here] = on_host.numpy()
        if uncertainty is not None:
            uncertainty[rows_here] = probabilities_uncertainty(on_host)
    return labels, probabilities, uncertainty


def blend_probabilities(accumulator: Accumulator, box: Region) -> torch.Tensor:
    """Class probabilities ``(K, *box)`` of the blend over ``box`` (accumulator coordinates),
    on the blend's device; 0 where no patch contributed.

    The values of ``Accumulator.probabilities`` with NaN made 0: each is made by
    elementwise operations alone, so a box gives every sample the same bits as
    the whole region.
    """
    if accumulator.weights is None:
        raise RuntimeError("resampling back needs an accumulator that tracks its weights")
    weights = accumulator.weights[box]
    mean = accumulator.logits[(slice(None), *box)] / weights.clamp_min(1e-12)
    # blended probabilities are their own weighted mean
    probs = mean if accumulator.scores == "probabilities" else class_probabilities(mean)
    # samples no patch covered are read by no valid voxel (see resample): any finite value does
    probs.masked_fill_(weights == 0, math.nan)
    return torch.nan_to_num_(probs, nan=0.0)


def _write_chunks(
    work: RegionWork,
    task: Index,
    region: Region,
    labels: npt.NDArray[np.integer],
    probabilities: npt.NDArray[np.floating] | None,
    uncertainty: npt.NDArray[np.uint8] | None = None,
) -> int:
    """Write the task's chunks not yet recorded as done; returns how many were written."""
    origin = tuple(s.start for s in region)
    done = work.sink.done_chunks()
    written = 0
    for chunk in task_chunk_indices(work, task):
        if chunk in done:
            continue
        local = shift(work.sink.chunk_region(chunk), origin)
        work.sink.write_chunk(
            chunk,
            labels[local] if work.write_labels else None,
            probabilities[(slice(None), *local)] if probabilities is not None else None,
            uncertainty[local] if uncertainty is not None else None,
        )
        written += 1
    return written


COUNT_BLOCK = 2**20


def class_counts(labels: npt.NDArray[np.integer], num_classes: int) -> list[int]:
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


def region_predictor(work: RegionWork) -> RegionPredictor:
    """The model's predictor, or for an ensemble one that averages its members' probabilities."""
    if not work.members:
        return work.model.predictor(work.predictor_options)
    members = [m.predictor(work.predictor_options) for m in work.members]
    return EnsemblePredictor(members, work.member_weights)


def blend_device(predictor: RegionPredictor) -> torch.device:
    """Where a task blends: on the model's GPU (only labels come back), else on the CPU."""
    device = predictor.device
    return device if device.type == "cuda" else torch.device("cpu")


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
    "tracks_weights",
]
