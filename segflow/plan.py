"""The plan of one run: the input checked against the model, the patch grid, the chunks,
the regions and batches, and the provenance recorded with the store.

``plan`` is the one place where options meet an input and a model; the engine gets
a :class:`~segflow.engine.region.RegionWork` that needs no further checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from segflow.engine.execute import REGION_MEMORY_BYTES
from segflow.engine.grid import PatchGrid, coerce_shape, make_grid, round_up
from segflow.engine.region import ModelHandle, PredictorOptions, RegionWork, default_task_chunks
from segflow.errors import ModelError
from segflow.io.orientation import AxisTransform, orientation_transform
from segflow.io.source import Source, VolumeGeometry
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.models import LoadedModel
from segflow.models.meta import ModelMeta
from segflow.models.predictor import resolve_device
from segflow.options import RunOptions
from segflow.version import __version__

DEFAULT_PATCH_2D = 512
DEFAULT_PATCH_3D = 96
DEFAULT_CHUNK_2D = 1024
DEFAULT_CHUNK_3D = 128
TASK_TARGET_2D = 2048  # a task's region; larger regions re-predict fewer halo patches
TASK_TARGET_3D = 256  # (both shrink when many classes would not fit REGION_MEMORY_BYTES)
CPU_BATCH_LOGITS_BYTES = 16 * 2**20
GPU_BATCH_SIZE = 8


def plan(
    source: Source,
    loaded: LoadedModel,
    output: Path,
    options: RunOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> RegionWork:
    """Check the input against the model, lay out the grid and create (or reopen) the store."""
    meta = loaded.meta
    squeeze_axis = check_fit(source, meta, options)
    grid = patch_grid(source, meta.patch_size, meta.output_stride, options, squeeze_axis)
    chunk = chunk_shape(source, options, squeeze_axis)
    layout = OutputLayout(
        spatial_shape=tuple(source.spatial_shape),
        chunk_shape=chunk,
        num_classes=meta.num_classes,
        write_labels=options.labels,
        probabilities=options.probabilities,
    )
    sink = ZarrSink.create(
        output,
        layout,
        source.geometry,
        list(meta.classes),
        provenance(source, loaded, options, grid),
        fingerprint(source, loaded, options),
        resume=resume,
        overwrite=overwrite,
    )
    dims = len(source.spatial_shape) - (squeeze_axis is not None)
    edge = options.region_size or default_region_size(
        dims, meta.num_classes, options.writes_probabilities
    )
    task_target = tuple(c if squeeze_axis == a else max(edge, c) for a, c in enumerate(chunk))
    return RegionWork(
        source=source,
        sink=sink,
        model=_model_handle(loaded),
        predictor_options=PredictorOptions(
            device=options.device,
            amp=options.amp,
            tta=options.tta,
            squeeze_axis=squeeze_axis,
            axis_order=axis_order(source, meta.orientation) if options.reorient else None,
        ),
        grid=grid,
        normalization=meta.normalization,
        blend=options.blend,
        sigma=options.sigma,
        batch_size=options.batch_size
        or auto_batch_size(options.device, meta.num_classes, grid.patch),
        task_chunks=default_task_chunks(chunk, task_target),
        write_labels=options.labels,
        write_probabilities=options.writes_probabilities,
    )


def check_fit(source: Source, meta: ModelMeta, options: RunOptions) -> int | None:
    """A one-line error when the input cannot go through the model; the axis a 2-D
    model slices a volume along, if it does."""
    if source.channels != meta.in_channels:
        hint = (
            "select bands with --bands, e.g. --bands 1,2,3"
            if source.kind == "raster"
            else "choose --volume N or --volumes-as-channels"
        )
        raise ModelError(
            f"{source.path} has {source.channels} channel(s) but the model expects "
            f"{meta.in_channels}; {hint}"
        )
    ndim = len(source.spatial_shape)
    if meta.spatial_dims == 3 and ndim == 2:
        raise ModelError(f"the model is 3-D but {source.path} is a 2-D raster; use a 2-D model")
    if meta.spatial_dims == 2 and ndim == 3:
        return 2 if options.slice_axis is None else options.slice_axis
    return None


def default_region_size(dims: int, num_classes: int, probabilities: bool) -> int:
    """Edge of a task's region: 2048 pixels or 256 voxels, less where its accumulator would not fit.

    The accumulator holds a float32 per class (and one for the weights when
    probabilities are written) for every pixel of the region; with many
    classes a 256^3 region would take gigabytes, so the edge shrinks until
    one accumulator fits REGION_MEMORY_BYTES.
    """
    target = TASK_TARGET_3D if dims == 3 else TASK_TARGET_2D
    pixel_bytes = 4 * (num_classes + int(probabilities))
    root: float = (REGION_MEMORY_BYTES / pixel_bytes) ** (1 / dims)
    fits = round(root)
    while fits > 1 and pixel_bytes * fits**dims > REGION_MEMORY_BYTES:  # the root's rounding
        fits -= 1
    return max(1, min(target, fits))


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


def patch_grid(
    source: Source,
    hint: tuple[int, ...] | None,
    stride: int,
    options: RunOptions,
    squeeze_axis: int | None,
) -> PatchGrid:
    """The global patch grid: the asked-for (or the model's) patch, never much over the image."""
    shape = tuple(source.spatial_shape)
    model_ndim = len(shape) - (squeeze_axis is not None)
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


def chunk_shape(source: Source, options: RunOptions, squeeze_axis: int | None) -> tuple[int, ...]:
    """Storage chunks: as asked, else 1024 / 128 aligned to the file's own tiles."""
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


def axis_order(source: Source, orientation: str | None) -> AxisTransform | None:
    """How a volume's voxels turn into the model's canonical orientation (None: as they are)."""
    if orientation is None or not isinstance(source.geometry, VolumeGeometry):
        return None
    transform = orientation_transform(source.geometry.affine, orientation)
    return None if transform.is_identity else transform


def fingerprint(source: Source, loaded: LoadedModel, options: RunOptions) -> str:
    """What a resumed run must share with the one that made the store."""
    stat = source.path.stat()
    payload = {
        "input": str(source.path.resolve()),
        "size": stat.st_size,
        "mtime": stat.st_mtime_ns,
        "model": loaded.sha256,
        "options": options.output_options(),
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def provenance(
    source: Source, loaded: LoadedModel, options: RunOptions, grid: PatchGrid
) -> dict[str, Any]:
    """What made the store: input, model and options, recorded in its attributes."""
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
        "parameters": {**options.output_options(), "patch": list(grid.patch)},
    }


def _model_handle(loaded: LoadedModel) -> ModelHandle:
    meta = loaded.meta
    return ModelHandle(
        path=loaded.path,
        sha256=loaded.sha256,
        num_classes=meta.num_classes,
        output_stride=meta.output_stride,
        module=loaded.module if loaded.path is None else None,
    )
