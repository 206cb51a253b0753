"""``segflow.segment``: one input (or many) through one model into geometry-keeping Zarr."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segflow.engine.blend import BlendMode
from segflow.engine.execute import REGION_MEMORY_BYTES, ProgressFn, execute
from segflow.engine.grid import PatchGrid, coerce_shape, iter_chunks, make_grid, round_up
from segflow.engine.region import (
    ModelHandle,
    PredictorOptions,
    RegionStats,
    RegionWork,
    default_task_chunks,
    pending_tasks,
    task_indices,
)
from segflow.errors import ConfigError, InputDataError, ModelError, SegflowError
from segflow.io.open import open_source
from segflow.io.source import Source, VolumeGeometry
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.models import LoadedModel, load_model
from segflow.models.predictor import AxisOrder, resolve_device
from segflow.version import __version__

DEFAULT_PATCH_2D = 512
DEFAULT_PATCH_3D = 96
DEFAULT_CHUNK_2D = 1024
DEFAULT_CHUNK_3D = 128
TASK_TARGET_2D = 2048  # a task's region; larger regions re-predict fewer halo patches
TASK_TARGET_3D = 256  # (both shrink when many classes would not fit REGION_MEMORY_BYTES)

ProbabilityMode = Literal["none", "uint8", "float16"]


@dataclass(frozen=True)
class RunOptions:
    """Every parameter that changes the output; recorded in the store and its fingerprint."""

    patch_size: int | tuple[int, ...] | None = None
    overlap: float | int = 0.25
    blend: str = "gaussian"
    sigma: float = 0.125
    batch_size: int | None = None  # None: as many patches as fit the device's sweet spot
    device: str = "auto"
    amp: bool = True
    tta: bool = False
    chunk_size: int | tuple[int, ...] | None = None
    labels: bool = True
    probabilities: ProbabilityMode = "none"
    bands: tuple[int, ...] | None = None
    nodata: float | None = None
    volume: int | None = None
    volumes_as_channels: bool = False
    slice_axis: int | None = None  # 2-D model on a volume: the axis to slice along
    reorient: bool = True  # honour a model's canonical orientation (inverted before writing)

    def check(self) -> None:
        BlendMode.parse(self.blend)
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.probabilities not in ("none", "uint8", "float16"):
            raise ConfigError(
                f"probabilities must be none, uint8 or float16, got '{self.probabilities}'"
            )
        if not self.labels and self.probabilities == "none":
            raise ConfigError("nothing to write: enable labels or probabilities")
        if not 0.0 < self.sigma <= 1.0:
            raise ConfigError(f"sigma is a fraction of the patch in (0, 1], got {self.sigma}")


@dataclass
class RunResult:
    input: Path
    output: Path
    status: Literal["complete", "failed"]
    seconds: float = 0.0
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def segment(
    inputs: str | Path | Sequence[str | Path],
    model: str | Path | LoadedModel,
    output: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    scheduler: Any = "threads",
    workers: int | None = None,
    region_size: int | None = None,
    progress: ProgressFn | None = None,
    raise_errors: bool | None = None,
    **options: Any,
) -> RunResult | list[RunResult]:
    """Segment one input (returns a RunResult) or several (returns a list).

    With several inputs, ``output`` is a folder receiving ``<name>.zarr`` per
    input, and a failing input does not stop the others (its result says why).
    ``region_size`` is the edge of the region one task reads and blends at once
    (rounded down to whole chunks); it changes memory and speed, never the output.
    """
    run_options = RunOptions(**_tupled(options))
    run_options.check()
    if region_size is not None and region_size < 1:
        raise ConfigError(f"region size must be at least 1, got {region_size}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    single = isinstance(inputs, str | Path)
    paths = [Path(inputs)] if isinstance(inputs, str | Path) else [Path(p) for p in inputs]
    if not paths:
        raise ConfigError("no inputs given")
    outputs = output_paths(paths, Path(output))
    results = []
    for path, out in zip(paths, outputs, strict=True):
        started = time.perf_counter()
        try:
            stats = segment_one(
                path,
                loaded,
                out,
                run_options,
                resume=resume,
                overwrite=overwrite,
                scheduler=scheduler,
                workers=workers,
                region_size=region_size,
                progress=progress,
            )
            results.append(
                RunResult(path, out, "complete", time.perf_counter() - started, None, stats)
            )
        except SegflowError as exc:
            if single if raise_errors is None else raise_errors:
                raise
            results.append(RunResult(path, out, "failed", time.perf_counter() - started, str(exc)))
    return results[0] if single else results


def output_paths(inputs: Sequence[Path], output: Path) -> list[Path]:
    """One input and OUT ending in .zarr: OUT itself; otherwise OUT/<input name>.zarr."""
    if len(inputs) == 1 and output.suffix == ".zarr":
        return [output]
    names = [_stem(p) for p in inputs]
    if len(set(names)) != len(names):
        raise ConfigError("two inputs have the same file name; give them separate output folders")
    return [output / f"{name}.zarr" for name in names]


def segment_one(
    input_path: Path,
    loaded: LoadedModel,
    output: Path,
    options: RunOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    scheduler: Any = "threads",
    workers: int | None = None,
    region_size: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    source = open_source(
        input_path,
        bands=options.bands,
        nodata=options.nodata,
        volume=options.volume,
        volumes_as_channels=options.volumes_as_channels,
    )
    work = plan(
        source,
        loaded,
        output,
        options,
        resume=resume,
        overwrite=overwrite,
        region_size=region_size,
    )
    if resume and work.sink.is_complete:
        return work.sink.summary or {}  # nothing left to do; keep what the finished run recorded
    checksum: dict[str, str] = {}
    hasher = threading.Thread(target=lambda: checksum.update(sha256=source.checksum()), daemon=True)
    hasher.start()  # hashing the input overlaps the run instead of delaying it
    started = time.perf_counter()
    created = not resume or not work.sink.done_chunks()
    try:
        todo = pending_tasks(work) if resume else task_indices(work)
        # an explicit CUDA device asks cluster workers for a GPU slot (one model task per GPU)
        resources = {"GPU": 1.0} if options.device.startswith("cuda") else None
        stats = execute(
            work, todo, scheduler=scheduler, workers=workers, progress=progress, resources=resources
        )
    except BaseException:
        hasher.join()
        raise
    hasher.join()
    if not resume and stats.valid_pixels == 0:
        if created and not overwrite:
            shutil.rmtree(output, ignore_errors=True)
        raise InputDataError(
            f"{input_path} has no valid pixels (all nodata or NaN); check the nodata value or the band selection"
        )
    if resume:
        # this run computed only the missing regions: count the whole store instead
        stats.valid_pixels, stats.class_counts = _count_labels(work)
    names = [c.name for c in loaded.meta.classes]
    seconds = time.perf_counter() - started
    summary = _summary(names, stats, seconds, checksum.get("sha256", ""), len(todo))
    work.sink.finalize(summary)
    return summary


def plan(
    source: Source,
    loaded: LoadedModel,
    output: Path,
    options: RunOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    region_size: int | None = None,
) -> RegionWork:
    """Check the input against the model, lay out the grid and create (or reopen) the store."""
    meta = loaded.meta
    if source.channels != meta.in_channels:
        hint = (
            "select bands with --bands, e.g. --bands 1,2,3"
            if source.kind == "raster"
            else ("choose --volume N or --volumes-as-channels")
        )
        raise ModelError(
            f"{source.path} has {source.channels} channel(s) but the model expects "
            f"{meta.in_channels}; {hint}"
        )
    ndim = len(source.spatial_shape)
    squeeze_axis = None
    if meta.spatial_dims == 3 and ndim == 2:
        raise ModelError(f"the model is 3-D but {source.path} is a 2-D raster; use a 2-D model")
    if meta.spatial_dims == 2 and ndim == 3:
        squeeze_axis = 2 if options.slice_axis is None else options.slice_axis
        if squeeze_axis not in (0, 1, 2):
            raise ConfigError(f"slice axis must be 0, 1 or 2, got {squeeze_axis}")
    grid = _grid(source, meta.patch_size, meta.output_stride, options, squeeze_axis)
    blend = BlendMode.parse(options.blend)
    chunk = _chunk_shape(source, options, squeeze_axis)
    layout = OutputLayout(
        spatial_shape=tuple(source.spatial_shape),
        chunk_shape=chunk,
        num_classes=meta.num_classes,
        write_labels=options.labels,
        probabilities=options.probabilities,
    )
    fingerprint = _fingerprint(source, loaded, options)
    attrs = _provenance(source, loaded, options, grid)
    sink = ZarrSink.create(
        output,
        layout,
        source.geometry,
        list(meta.classes),
        attrs,
        fingerprint,
        resume=resume,
        overwrite=overwrite,
    )
    edge = region_size or default_region_size(
        ndim - (squeeze_axis is not None), meta.num_classes, options.probabilities != "none"
    )
    task_target = tuple(c if squeeze_axis == a else max(edge, c) for a, c in enumerate(chunk))
    predictor_options = PredictorOptions(
        device=options.device,
        amp=options.amp,
        tta=options.tta,
        squeeze_axis=squeeze_axis,
        axis_order=_axis_order(source, meta.orientation) if options.reorient else None,
    )
    handle = ModelHandle(
        path=loaded.path,
        sha256=loaded.sha256,
        num_classes=meta.num_classes,
        output_stride=meta.output_stride,
        module=loaded.module if loaded.path is None else None,
    )
    return RegionWork(
        source=source,
        sink=sink,
        model=handle,
        predictor_options=predictor_options,
        grid=grid,
        normalization=meta.normalization,
        blend=blend,
        sigma=options.sigma,
        batch_size=options.batch_size
        or auto_batch_size(options.device, meta.num_classes, grid.patch),
        task_chunks=default_task_chunks(chunk, task_target),
        write_labels=options.labels,
        write_probabilities=options.probabilities != "none",
    )


def default_region_size(dims: int, num_classes: int, probabilities: bool) -> int:
    """Edge of a task's region: 2048 pixels or 256 voxels, less where its accumulator would not fit.

    The accumulator holds a float32 per class (and one for the weights when
    probabilities are written) for every pixel of the region; with many
    classes a 256^3 region would take gigabytes, so the edge shrinks until
    one accumulator fits REGION_MEMORY_BYTES.
    """
    target = TASK_TARGET_3D if dims == 3 else TASK_TARGET_2D
    pixel_bytes = 4 * (num_classes + int(probabilities))
    fits = round((REGION_MEMORY_BYTES / pixel_bytes) ** (1 / dims))
    while fits > 1 and pixel_bytes * fits**dims > REGION_MEMORY_BYTES:  # the root's rounding
        fits -= 1
    return max(1, min(target, fits))


CPU_BATCH_LOGITS_BYTES = 16 * 2**20
GPU_BATCH_SIZE = 8


def auto_batch_size(device: str, num_classes: int, patch: tuple[int, ...]) -> int:
    """Patches per forward when none is asked for.

    A GPU wants full batches. A CPU gains nothing from them, and a batch whose
    float32 logits stay under ~16 MB reuses heap memory instead of mapping
    fresh pages for every batch: on the near-free benchmark, batches of 2
    instead of 8 made the whole run 1.4x faster.
    """
    if resolve_device(device).type != "cpu":
        return GPU_BATCH_SIZE
    patch_bytes = num_classes * math.prod(patch) * 4
    return max(1, min(GPU_BATCH_SIZE, CPU_BATCH_LOGITS_BYTES // patch_bytes))


def _grid(
    source: Source,
    hint: tuple[int, ...] | None,
    stride: int,
    options: RunOptions,
    squeeze_axis: int | None,
) -> PatchGrid:
    shape = tuple(source.spatial_shape)
    ndim = len(shape)
    model_ndim = ndim - (squeeze_axis is not None)
    requested = (
        options.patch_size or hint or (DEFAULT_PATCH_3D if model_ndim == 3 else DEFAULT_PATCH_2D)
    )
    patch = list(coerce_shape(requested, model_ndim, "patch size"))
    overlap: list[float | int] = [options.overlap] * model_ndim
    if squeeze_axis is not None:
        patch.insert(squeeze_axis, 1)
        overlap.insert(squeeze_axis, 0)
    # a patch much larger than a short axis only costs compute: shrink it, keeping the stride multiple
    patch = [
        p if p == 1 else min(p, round_up(n, stride)) for p, n in zip(patch, shape, strict=True)
    ]
    return make_grid(shape, tuple(patch), tuple(overlap))


def _chunk_shape(source: Source, options: RunOptions, squeeze_axis: int | None) -> tuple[int, ...]:
    ndim = len(source.spatial_shape)
    default = DEFAULT_CHUNK_3D if ndim == 3 else DEFAULT_CHUNK_2D
    chunk = coerce_shape(options.chunk_size or default, ndim, "chunk size")
    if options.chunk_size is None and ndim == 2:
        # align with the file's internal tiles so reads never split a tile
        block = source.block_shape
        chunk = tuple(
            max(b, round_up(c, b)) if b > 1 else c for c, b in zip(chunk, block, strict=True)
        )
    return tuple(min(c, n) for c, n in zip(chunk, source.spatial_shape, strict=True))


def _axis_order(source: Source, orientation: str | None) -> AxisOrder | None:
    if orientation is None or not isinstance(source.geometry, VolumeGeometry):
        return None
    from segflow.io.orientation import orientation_transform

    transform = orientation_transform(source.geometry.affine, orientation)
    if transform.perm == tuple(range(len(transform.perm))) and not any(transform.flip):
        return None
    return AxisOrder(perm=transform.perm, flip=transform.flip)


def _fingerprint(source: Source, loaded: LoadedModel, options: RunOptions) -> str:
    stat = source.path.stat()
    payload = {
        "input": str(source.path.resolve()),
        "size": stat.st_size,
        "mtime": stat.st_mtime_ns,
        "model": loaded.sha256,
        "options": asdict(options),
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _provenance(
    source: Source, loaded: LoadedModel, options: RunOptions, grid: PatchGrid
) -> dict[str, Any]:
    meta = loaded.meta
    return {
        "segflow_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": {
            "path": str(source.path.resolve()),
            "kind": source.kind,
            "shape": list(source.spatial_shape),
            "channels": source.channels,
            "dtype": str(source.dtype),
            "band_names": list(source.band_names),
            "nodata": source.nodata,
        },
        "model": {
            "path": str(loaded.path) if loaded.path else None,
            "sha256": loaded.sha256,
            "arch": meta.arch,
            "arch_kwargs": meta.arch_kwargs,
            "runtime": loaded.runtime,
            "spatial_dims": meta.spatial_dims,
            "output_stride": meta.output_stride,
            "provenance": meta.provenance,
        },
        "parameters": {**asdict(options), "patch": list(grid.patch)},
    }


def _summary(
    names: list[str], stats: RegionStats, seconds: float, checksum: str, region_tasks: int
) -> dict[str, Any]:
    return {
        "input_sha256": checksum,
        "seconds": round(seconds, 3),
        "region_tasks": region_tasks,  # this run's; a resumed run counts only its own
        "valid_pixels": stats.valid_pixels,
        "patches_predicted": stats.patches_predicted,
        "patches_skipped_nodata": stats.patches_skipped,
        "class_pixel_counts": dict(zip(names, stats.class_counts, strict=False)),
    }


def _count_labels(work: RegionWork) -> tuple[int, list[int]]:
    """Valid pixels and per-class counts of a finished store, read chunk by chunk."""
    num_classes = work.model.num_classes
    counts = np.zeros(num_classes, np.int64)
    valid = 0
    if not work.write_labels:
        return 0, counts.tolist()
    for chunk in iter_chunks(work.sink.chunk_grid_shape, (1,) * len(work.sink.chunk_grid_shape)):
        labels = work.sink.read_labels(work.sink.chunk_region(chunk))
        histogram = np.bincount(labels.ravel(), minlength=num_classes)
        counts += histogram[:num_classes]
        valid += int(histogram[:num_classes].sum())
    return valid, [int(c) for c in counts]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".tiff", ".tif", ".nii", ".gtiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _tupled(options: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
