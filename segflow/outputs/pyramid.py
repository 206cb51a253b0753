"""Multiscale label pyramids inside a segflow store, built chunk by chunk.

Each level halves the previous one (mode or nearest downsampling of labels), so a
viewer or a preview reads a coarse level instead of the whole image. Where the
levels live in the store (overview groups for rasters, OME-Zarr levels for
volumes) is :mod:`segflow.io.zarr_levels`' business.

Memory: one output chunk and its source region (``factor`` times larger) per
worker thread, never a whole level.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError, OutputError
from segflow.io.source import VolumeGeometry
from segflow.io.zarr_levels import (
    OVERVIEW_GROUP,
    PyramidLevel,
    create_level,
    level_path,
    open_level,
    pyramid_levels,
    raster_level_dims,
    raster_level_transform,
    record_levels,
    remove_levels,
    volume_level_affine,
)
from segflow.io.zarr_sink import ZarrSink
from segflow.io.zarr_write import StoreArray
from segflow.options import Resampling

__all__ = [  # the level storage names stay importable from here
    "OVERVIEW_GROUP",
    "PyramidLevel",
    "build_pyramid",
    "downsample_labels",
    "open_level",
    "plan_factors",
    "pyramid_levels",
    "raster_level_dims",
    "raster_level_transform",
    "volume_level_affine",
]

RASTER_MIN_SIZE = 256  # stop once the level fits in one 256 px tile, as GDAL overviews do
VOLUME_MIN_SIZE = 32
ANISOTROPY = 1.5  # volumes: halve an axis only while its spacing is within 1.5x the finest


# --- pure downsampling ------------------------------------------------------------------------


def _pad_to_multiple(
    block: npt.NDArray[np.generic], factor: Sequence[int], resampling: Resampling, nodata: int
) -> npt.NDArray[np.generic]:
    pad = [(0, -n % f) for n, f in zip(block.shape, factor, strict=True)]
    if not any(after for _, after in pad):
        return block
    if resampling is Resampling.NEAREST:
        return np.pad(block, pad, mode="edge")  # a partial edge block keeps its own labels
    return np.pad(block, pad, mode="constant", constant_values=nodata)  # mode ignores the pad


def _members(
    block: npt.NDArray[np.generic], factor: Sequence[int]
) -> list[npt.NDArray[np.generic]]:
    """The members of every block as strided views, one per position, in scan order."""
    offsets = itertools.product(*(range(f) for f in factor))
    return [
        block[tuple(slice(o, None, f) for o, f in zip(offset, factor, strict=True))]
        for offset in offsets
    ]


def downsample_labels(
    labels: npt.NDArray[np.generic],
    factor: int | Sequence[int],
    nodata: int,
    resampling: str | Resampling = Resampling.MODE,
) -> npt.NDArray[np.generic]:
    """Reduce each ``factor`` block of ``labels`` to one label; the result is ceil(shape / factor).

    ``mode`` ignores ``nodata`` (a block is nodata only when all of it is) and breaks ties
    like GDAL's MODE: counting in scan order, the label that first reaches the winning
    count wins. ``nearest`` takes the block's centre pixel, whatever it is.
    """
    method = Resampling.parse(resampling)
    f = (factor,) * labels.ndim if isinstance(factor, int) else tuple(int(v) for v in factor)
    if len(f) != labels.ndim or any(v < 1 for v in f):
        raise ConfigError(f"factor {factor} does not fit an array of {labels.ndim} axes")
    if all(v == 1 for v in f):
        return labels.copy()
    padded = _pad_to_multiple(labels, f, method, nodata)
    if method is Resampling.NEAREST:
        centre = tuple(slice(v // 2, None, v) for v in f)
        return np.ascontiguousarray(padded[centre])
    members = _members(padded, f)
    valid = [m != nodata for m in members]
    # Counting in scan order, member q's running count is how often its label occurs among
    # members 0..q; the label that first reaches the largest running count wins. That is
    # how GDAL's MODE breaks ties, so COG overviews and these levels agree.
    best = np.where(valid[0], members[0], nodata).astype(labels.dtype)
    best_count = valid[0].astype(np.uint8)
    for q in range(1, len(members)):  # k(k-1)/2 comparisons: 6 for 2x2, 28 for 2x2x2
        count = valid[q].astype(np.uint8)
        for p in range(q):
            count += (members[p] == members[q]) & valid[p]
        count *= valid[q]
        better = count > best_count
        best[better] = members[q][better]
        best_count[better] = count[better]
    return best


def plan_factors(
    shape: Sequence[int],
    spacing: Sequence[float] | None = None,
    *,
    levels: int | None = None,
    min_size: int | None = None,
) -> list[tuple[int, ...]]:
    """Per-level step factors (relative to the previous level), finest first.

    Each step halves every axis longer than 1; with ``spacing`` (volumes), only the axes
    whose spacing is within 1.5x the finest, so thick-slice volumes become isotropic
    before their slices are merged. Stops when the largest axis is at most ``min_size``
    (or after ``levels`` levels, or when nothing can shrink further).
    """
    if levels is not None and levels < 0:
        raise ConfigError(f"levels must be 0 or more, got {levels}")
    size = [int(n) for n in shape]
    space = [1.0] * len(size) if spacing is None else [abs(float(s)) for s in spacing]
    limit = (
        (VOLUME_MIN_SIZE if spacing is not None else RASTER_MIN_SIZE)
        if min_size is None
        else min_size
    )
    steps: list[tuple[int, ...]] = []
    while levels is None or len(steps) < levels:
        if levels is None and max(size) <= limit:
            break
        finest = min(s for s, n in zip(space, size, strict=True) if n > 1) if max(size) > 1 else 0.0
        step = tuple(
            2 if n > 1 and s <= finest * ANISOTROPY else 1 for n, s in zip(size, space, strict=True)
        )
        if all(v == 1 for v in step):
            break
        steps.append(step)
        size = [math.ceil(n / v) for n, v in zip(size, step, strict=True)]
        space = [s * v for s, v in zip(space, step, strict=True)]
    return steps


# --- building ---------------------------------------------------------------------------------


def build_pyramid(
    store: str | os.PathLike[str] | ZarrSink,
    *,
    levels: int | None = None,
    resampling: str | Resampling = Resampling.MODE,
    min_size: int | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> list[PyramidLevel]:
    """Add downsampled label levels to a complete store; returns them, finest first.

    Each level is computed from the previous one, one output chunk per task (each chunk
    written whole by one task). ``overwrite`` replaces an existing pyramid.
    """
    method = Resampling.parse(resampling)
    sink = ZarrSink.open_finished(store, purpose="building a pyramid")
    if pyramid_levels(sink) and not overwrite:
        raise OutputError(f"{sink.path} already has a pyramid; pass --overwrite to rebuild it")
    remove_levels(sink)
    geometry = sink.geometry
    spacing = geometry.zooms if isinstance(geometry, VolumeGeometry) else None
    steps = plan_factors(sink.layout.spatial_shape, spacing, levels=levels, min_size=min_size)
    built: list[PyramidLevel] = []
    source = sink.labels_array()
    cumulative: tuple[int, ...] = (1,) * len(sink.layout.spatial_shape)
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for n, step in enumerate(steps, start=1):
            cumulative = tuple(t * s for t, s in zip(cumulative, step, strict=True))
            shape = tuple(math.ceil(s / f) for s, f in zip(source.shape, step, strict=True))
            chunks = tuple(min(c, s) for c, s in zip(sink.layout.chunk_shape, shape, strict=True))
            target = create_level(sink, n, shape, chunks, cumulative)
            jobs = [
                pool.submit(
                    _write_level_chunk, source, target, index, step, sink.label_nodata, method
                )
                for index in np.ndindex(*target.cdata_shape)
            ]
            for job in jobs:
                job.result()  # re-raise the first failure
            built.append(PyramidLevel(n, level_path(sink, n), cumulative, shape, chunks))
            source = target
    record_levels(sink, built, method.value)
    return built


def _write_level_chunk(
    source: StoreArray,
    target: StoreArray,
    index: tuple[int, ...],
    step: tuple[int, ...],
    nodata: int,
    method: Resampling,
) -> None:
    out = tuple(
        slice(i * c, min((i + 1) * c, n))
        for i, c, n in zip(index, target.chunks, target.shape, strict=True)
    )
    src = tuple(
        slice(s.start * f, min(s.stop * f, n))
        for s, f, n in zip(out, step, source.shape, strict=True)
    )
    block = np.asarray(source[src])
    target[out] = downsample_labels(block, step, nodata, method)
