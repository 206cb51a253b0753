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
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from segflow.engine.ensemble import Ensemble
from segflow.engine.execute import REGION_MEMORY_BYTES
from segflow.engine.grid import PatchGrid, coerce_shape, make_grid, round_up
from segflow.engine.region import ModelHandle, PredictorOptions, RegionWork, default_task_chunks
from segflow.engine.resample import ModelSpace, geometry_spacing, model_space
from segflow.errors import ConfigError, ModelError
from segflow.io.orientation import AxisTransform, orientation_transform
from segflow.io.source import Source, VolumeGeometry
from segflow.io.stores import StorePath
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.models import LoadedModel
from segflow.models.compat import band_numbers as _band_numbers
from segflow.models.compat import check_channels
from segflow.models.compat import named_bands as _named
from segflow.models.compat import squeeze_axis as _squeeze_axis
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


class CompatibilityWarning(UserWarning):
    """The input and the model fit, but not as they were trained (recorded with the store)."""


@dataclass(frozen=True)
class Fit:
    """How an input goes through a model, checked before any work."""

    squeeze_axis: int | None  # the axis a 2-D model slices a volume along, if it does
    axis_order: AxisTransform | None  # file voxel order -> the model's orientation
    model_space: ModelSpace | None  # the model's grid where its spacing differs from the input's
    warnings: tuple[str, ...] = ()


def plan(
    source: Source,
    loaded: LoadedModel | Ensemble,
    output: StorePath,
    options: RunOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> RegionWork:
    """Check the input against the model, lay out the grid and create (or reopen) the store."""
    meta = loaded.meta
    fit = check_fit(source, meta, options)
    for message in fit.warnings:
        warnings.warn(message, CompatibilityWarning, stacklevel=2)
    squeeze_axis, space = fit.squeeze_axis, fit.model_space
    grid_shape = space.model_shape if space is not None else tuple(source.spatial_shape)
    grid = patch_grid(
        source, meta.patch_size, meta.output_stride, options, squeeze_axis, shape=grid_shape
    )
    chunk = chunk_shape(source, options, squeeze_axis)
    layout = OutputLayout(
        spatial_shape=tuple(source.spatial_shape),
        chunk_shape=chunk,
        num_classes=meta.num_classes,
        write_labels=options.labels,
        probabilities=options.probabilities,
        zarr_format=options.zarr_format,
        uncertainty=options.uncertainty,
    )
    sink = ZarrSink.create(
        output,
        layout,
        source.geometry,
        list(meta.classes),
        provenance(source, loaded, options, grid, fit),
        fingerprint(source, loaded, options),
        resume=resume,
        overwrite=overwrite,
    )
    dims = len(source.spatial_shape) - (squeeze_axis is not None)
    edge = options.region_size or default_region_size(
        dims, meta.num_classes, options.writes_probabilities or options.uncertainty
    )
    if space is not None and options.region_size is None and space.max_zoom > 1:
        # a finer model grid blends more samples than the region has: keep its accumulator in budget
        edge = max(1, int(edge / space.max_zoom))
    task_target = tuple(c if squeeze_axis == a else max(edge, c) for a, c in enumerate(chunk))
    members = loaded.members if isinstance(loaded, Ensemble) else ()
    first = loaded.members[0] if isinstance(loaded, Ensemble) else loaded
    return RegionWork(
        source=source,
        sink=sink,
        model=_model_handle(first),
        predictor_options=PredictorOptions(
            device=options.device,
            amp=options.amp,
            tta=options.tta,
            squeeze_axis=squeeze_axis,
            axis_order=fit.axis_order,
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
        write_uncertainty=options.uncertainty,
        model_space=space,
        members=tuple(_model_handle(m) for m in members),
        member_weights=loaded.member_weights() if isinstance(loaded, Ensemble) else (),
    )


def check_fit(source: Source, meta: ModelMeta, options: RunOptions) -> Fit:
    """The input checked against the model before any work.

    Mismatches that make the result meaningless (channels, dimensions, values or
    spacing far off the model's) are one-line ModelErrors with the fix; the
    others are one-line warnings, recorded in the store's provenance.
    """
    check_channels(source, meta, options)
    squeeze_axis = _squeeze_axis(source, meta, options)
    order = axis_order(source, meta.orientation) if options.reorient else None
    space, spacing_notes = fit_resolution(source, meta, options, squeeze_axis, order)
    notes = [
        *band_name_warnings(source, meta, options),
        *spacing_notes,
        *value_range_warnings(source, meta),
        *orientation_warnings(source, meta, options),
    ]
    return Fit(squeeze_axis, order, space, tuple(notes))


MAX_RESAMPLING = 20.0  # beyond this spacing ratio the units, not the scans, differ
VALUE_SAMPLE_2D = 256  # edge of the window sampled at the centre for the value check
VALUE_SAMPLE_3D = 48


def band_name_warnings(source: Source, meta: ModelMeta, options: RunOptions) -> list[str]:
    """Where both sides name their bands: bands the input lacks, or an order to fix."""
    expected, given = meta.band_names, _named(source)
    if expected is None or given is None or tuple(expected) == given:
        return []
    missing = [name for name in expected if name not in given]
    if missing:
        return [
            f"{source.path} has bands {', '.join(given)} but the model expects "
            f"{', '.join(expected)} (missing {', '.join(missing)}); check the band order"
        ]
    return [
        f"{source.path} has bands {', '.join(given)} but the model expects "
        f"{', '.join(expected)}; reorder with --bands {_band_numbers(source, meta, options)}"
    ]


def fit_resolution(
    source: Source,
    meta: ModelMeta,
    options: RunOptions,
    squeeze_axis: int | None,
    order: AxisTransform | None,
) -> tuple[ModelSpace | None, list[str]]:
    """The model grid where the model's spacing differs from the input's, and what to say."""
    wanted = model_spacing(source, meta, options, squeeze_axis, order)
    if wanted is None:
        return None, []
    unit = "m" if source.kind == "raster" else "mm"
    found = geometry_spacing(source.geometry, source.spatial_shape)
    if found is None:
        return None, [
            f"{source.path} has no pixel size (not georeferenced), so it is not resampled to "
            f"the model's {_sizes(wanted, unit)}"
        ]
    ratios = [f / w for f, w in zip(found, wanted, strict=True)]
    if any(not 1 / MAX_RESAMPLING <= r <= MAX_RESAMPLING for r in ratios):
        raise ModelError(
            f"{source.path} has a spacing of {_sizes(found, unit)} but the model was trained at "
            f"{_sizes(wanted, unit)} ({_factors(ratios)}); check the units, or pass "
            f"{'--resolution' if source.kind == 'raster' else '--spacing'} or --no-resample"
        )
    space = model_space(source.spatial_shape, found, wanted)
    if space is None:
        return None, []
    if not options.resample:
        return None, [
            f"{source.path} has a spacing of {_sizes(found, unit)} but the model was trained at "
            f"{_sizes(wanted, unit)}; with --no-resample it sees the input's own pixels"
        ]
    return space, [
        f"resampling {source.path} from {_sizes(found, unit)} to the model's "
        f"{_sizes(wanted, unit)} ({_factors(ratios)}; model grid "
        f"{'x'.join(map(str, space.model_shape))})"
    ]


def model_spacing(
    source: Source,
    meta: ModelMeta,
    options: RunOptions,
    squeeze_axis: int | None,
    order: AxisTransform | None,
) -> tuple[float, ...] | None:
    """The model's spacing along each input array axis (None: the model declares none).

    Rasters use the ground resolution; volumes the spacing, given in the model's
    axis order (turned to the file's voxel order here). A 2-D model on a volume
    keeps the input's spacing along the axis it slices.
    """
    if source.kind == "raster":
        resolution = options.resolution or meta.resolution
        return None if resolution is None else (resolution, resolution)
    spacing = options.spacing or meta.spacing
    if spacing is None:
        return None
    found = geometry_spacing(source.geometry, source.spatial_shape) or (1.0,) * len(
        source.spatial_shape
    )
    axes = [a for a in range(len(found)) if a != squeeze_axis]
    if len(spacing) == 1:
        spacing = spacing * len(axes)
    if len(spacing) != len(axes):
        raise ConfigError(f"spacing needs 1 or {len(axes)} values, got {len(spacing)}")
    per_axis = list(found)
    if order is not None:  # model axis d is file axis perm[d]
        axes = [order.perm[d] for d in range(len(axes))]
    for axis, value in zip(axes, spacing, strict=True):
        per_axis[axis] = value
    return tuple(per_axis)


def _sizes(values: tuple[float, ...], unit: str) -> str:
    return " x ".join(f"{v:.3g}" for v in values) + f" {unit}"


def _factors(ratios: list[float]) -> str:
    return "scale " + " x ".join(f"{r:.3g}" for r in ratios)


def value_range_warnings(source: Source, meta: ModelMeta) -> list[str]:
    """Values sampled at the input's centre against the model's expected range.

    An error when a channel's median lies a whole range away (8-bit values into a
    reflectance model, HU into an MR model); a warning when over a tenth of the
    samples fall outside it.
    """
    if meta.value_range is None:
        return []
    sample = source.read(_centre_window(source.spatial_shape))
    values = _physical(sample.data, meta)
    notes = []
    for channel, (lo, hi) in enumerate(meta.value_range):
        seen = values[channel][sample.valid]
        seen = seen[np.isfinite(seen)]
        if seen.size == 0:
            continue
        name = _channel_name(source, meta, channel)
        span, median = hi - lo, float(np.median(seen))
        if not lo - span <= median <= hi + span:
            raise ModelError(
                f"{name} of {source.path} ({source.dtype}) has values around {median:.4g} but the "
                f"model expects {lo:g}..{hi:g}; convert the input to the model's units"
            )
        outside = float(np.mean((seen < lo - 0.1 * span) | (seen > hi + 0.1 * span)))
        if outside > 0.1:
            notes.append(
                f"{outside:.0%} of the sampled values of {name} of {source.path} lie outside "
                f"the model's {lo:g}..{hi:g}"
            )
    return notes


def _centre_window(shape: tuple[int, ...]) -> tuple[slice, ...]:
    edge = VALUE_SAMPLE_3D if len(shape) == 3 else VALUE_SAMPLE_2D
    return tuple(slice(max(0, (n - edge) // 2), min(n, (n + edge) // 2 + 1)) for n in shape)


def _physical(data: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """Raw values in the units the model's normalization scale/offset give."""
    values = data.astype(np.float64)
    norm = meta.normalization
    shape = (-1,) + (1,) * (values.ndim - 1)
    if norm is not None and norm.scale is not None:
        values *= np.asarray(norm.scale).reshape(shape)
    if norm is not None and norm.offset is not None:
        values += np.asarray(norm.offset).reshape(shape)
    return values


def _channel_name(source: Source, meta: ModelMeta, channel: int) -> str:
    if meta.band_names is not None:
        return f"band {meta.band_names[channel]}"
    return f"channel {channel + 1}"


def orientation_warnings(source: Source, meta: ModelMeta, options: RunOptions) -> list[str]:
    """A model that wants one orientation, fed another one because --no-reorient was set."""
    geometry = source.geometry
    if options.reorient or meta.orientation is None or not isinstance(geometry, VolumeGeometry):
        return []
    found = "".join(geometry.orientation)
    if found == meta.orientation.upper():
        return []
    return [
        f"the model expects {meta.orientation.upper()} volumes but {source.path} is {found} "
        "and --no-reorient is set; drop --no-reorient"
    ]


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
    # never one: a lone patch is forwarded as a pair anyway (see Predictor), which would
    # double the forward work of every batch
    return max(2, min(GPU_BATCH_SIZE, CPU_BATCH_LOGITS_BYTES // patch_bytes))


def patch_grid(
    source: Source,
    hint: tuple[int, ...] | None,
    stride: int,
    options: RunOptions,
    squeeze_axis: int | None,
    *,
    shape: tuple[int, ...] | None = None,
) -> PatchGrid:
    """The global patch grid: the asked-for (or the model's) patch, never much over the image.

    ``shape`` is the grid's (the model grid's when resampling), else the input's.
    """
    shape = shape or tuple(source.spatial_shape)
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


def fingerprint(source: Source, loaded: LoadedModel | Ensemble, options: RunOptions) -> str:
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
    source: Source, loaded: LoadedModel | Ensemble, options: RunOptions, grid: PatchGrid, fit: Fit
) -> dict[str, Any]:
    """What made the store: input, model and options, recorded in its attributes.

    Coded concepts, ensemble members, resampling and compatibility warnings are
    recorded only where there are any.
    """
    recorded = _base_provenance(source, loaded, options, grid)
    if loaded.meta.concepts:  # coded concepts per class, for a DICOM SEG made from the store
        recorded["model"]["concepts"] = {
            name: concept.model_dump(mode="json") for name, concept in loaded.meta.concepts.items()
        }
    if isinstance(loaded, Ensemble):
        recorded["ensemble"] = loaded.describe()
    if fit.model_space is not None:
        space = fit.model_space
        recorded["resampling"] = {
            "input_spacing": list(space.input_spacing),
            "model_spacing": list(space.model_spacing),
            "model_grid": list(space.model_shape),
        }
    if fit.warnings:
        recorded["warnings"] = list(fit.warnings)
    return recorded


def _base_provenance(
    source: Source, loaded: LoadedModel | Ensemble, options: RunOptions, grid: PatchGrid
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
