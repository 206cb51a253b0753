"""Multiscale label pyramids inside a segflow store, built chunk by chunk.

Each level halves the previous one (mode or nearest downsampling of labels), so a
viewer or a preview reads a coarse level instead of the whole image.

Rasters: level ``n`` is the group ``overviews/<n>``, laid out exactly like level 0
(``labels`` (y, x), ``x``, ``y``, ``spatial_ref`` with the level's own
GeoTransform), so ``xarray.open_zarr(store, group="overviews/1")`` plus rioxarray
opens it like the full-resolution data. Volumes: level ``n`` is the array ``<n>``
beside ``0`` in the OME-Zarr label image, listed in ``ome.multiscales[0].datasets``.
Either way the root ``segflow`` attribute records the levels under ``pyramid``.

Memory: one output chunk and its source region (``factor`` times larger) per
worker thread, never a whole level.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import ZstdCodec

from segflow.errors import ConfigError, OutputError
from segflow.io import zarr_meta as meta
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_sink import CHUNK_KEY_ENCODING, ZSTD_LEVEL, ZarrSink
from segflow.options import Resampling

OVERVIEW_GROUP = "overviews"
RASTER_MIN_SIZE = 256  # stop once the level fits in one 256 px tile, as GDAL overviews do
VOLUME_MIN_SIZE = 32
ANISOTROPY = 1.5  # volumes: halve an axis only while its spacing is within 1.5x the finest


@dataclass(frozen=True)
class PyramidLevel:
    """One stored level; ``factor`` is relative to level 0, per spatial axis."""

    level: int
    path: str  # the level's label array inside the store
    factor: tuple[int, ...]
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]


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


def raster_level_transform(
    transform: Sequence[float], factor: Sequence[int]
) -> tuple[float, float, float, float, float, float]:
    """Affine (a, b, c, d, e, f) of a level whose pixels cover ``factor`` (y, x) pixels."""
    a, b, c, d, e, f = (float(v) for v in transform)
    fy, fx = (int(v) for v in factor)
    return (a * fx, b * fy, c, d * fx, e * fy, f)


def volume_level_affine(affine: npt.ArrayLike, factor: Sequence[int]) -> npt.NDArray[np.float64]:
    """Voxel-to-world affine of a level: its voxel centres sit at the centres of the blocks."""
    aff = np.asarray(affine, dtype=np.float64)
    f = np.asarray(factor, dtype=np.float64)
    out = aff.copy()
    out[:3, :3] = aff[:3, :3] * f[None, :]
    out[:3, 3] = aff[:3, :3] @ ((f - 1.0) / 2.0) + aff[:3, 3]
    return out


# --- reading what is stored -----------------------------------------------------------------


def pyramid_levels(store: str | os.PathLike[str] | ZarrSink) -> list[PyramidLevel]:
    """The levels recorded in the store, finest first; empty when it has no pyramid."""
    sink = store if isinstance(store, ZarrSink) else ZarrSink.open(store)
    info = _attrs(_root(sink.path, "r")).get("segflow", {})
    recorded = info.get("pyramid") if isinstance(info, dict) else None
    if not isinstance(recorded, dict):
        return []
    return [
        PyramidLevel(
            level=int(entry["level"]),
            path=str(entry["path"]),
            factor=tuple(int(v) for v in entry["factor"]),
            shape=tuple(int(v) for v in entry["shape"]),
            chunk_shape=tuple(int(v) for v in entry["chunk_shape"]),
        )
        for entry in recorded.get("levels", [])
    ]


def open_level(store: str | os.PathLike[str] | ZarrSink, level: int) -> zarr.Array:
    """The label array of ``level`` (0 = full resolution), read-only."""
    sink = store if isinstance(store, ZarrSink) else ZarrSink.open(store)
    if level == 0:
        return sink.labels_array()
    for entry in pyramid_levels(sink):
        if entry.level == level:
            array = zarr.open_array(sink.path, path=entry.path, mode="r", zarr_format=3)
            return array
    raise OutputError(f"{sink.path} has no pyramid level {level}; build it with `segflow pyramid`")


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
    sink = store if isinstance(store, ZarrSink) else ZarrSink.open(store)
    if sink.labels_path is None:
        raise OutputError(f"{sink.path} holds no labels; pyramids are built from labels")
    if not sink.is_complete:
        done, total = len(sink.done_chunks()), math.prod(sink.chunk_grid_shape)
        raise OutputError(
            f"{sink.path} is not complete ({done} of {total} chunks written); finish it with "
            "`segflow run --resume` before building a pyramid"
        )
    if pyramid_levels(sink) and not overwrite:
        raise OutputError(f"{sink.path} already has a pyramid; pass --overwrite to rebuild it")
    root = _root(sink.path, "r+")
    _remove_levels(root, sink)

    geometry = sink.geometry
    spacing = geometry.zooms if isinstance(geometry, VolumeGeometry) else None
    steps = plan_factors(sink.layout.spatial_shape, spacing, levels=levels, min_size=min_size)
    nodata = sink.label_nodata
    built: list[PyramidLevel] = []
    source = sink.labels_array()
    cumulative: tuple[int, ...] = (1,) * len(sink.layout.spatial_shape)
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for n, step in enumerate(steps, start=1):
            cumulative = tuple(t * s for t, s in zip(cumulative, step, strict=True))
            shape = tuple(math.ceil(s / f) for s, f in zip(source.shape, step, strict=True))
            chunks = tuple(min(c, s) for c, s in zip(sink.layout.chunk_shape, shape, strict=True))
            target = _create_level(root, sink, n, shape, chunks, cumulative)
            jobs = [
                pool.submit(_write_level_chunk, source, target, index, step, nodata, method)
                for index in np.ndindex(*target.cdata_shape)
            ]
            for job in jobs:
                job.result()  # re-raise the first failure
            built.append(PyramidLevel(n, _level_path(sink, n), cumulative, shape, chunks))
            source = target
    _record(root, sink, built, method)
    _consolidate(sink.path)
    return built


def _write_level_chunk(
    source: zarr.Array,
    target: zarr.Array,
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


def raster_level_dims(level: int) -> tuple[str, str]:
    """Dimension names of an overview level: ``y_<n>``, ``x_<n>``.

    Not ``y``/``x``: the overview groups sit below level 0, and ``xarray.open_datatree``
    refuses a child whose dimensions share the parent's names but not its sizes.
    rioxarray finds them through their CF ``axis`` attributes.
    """
    return (f"y_{level}", f"x_{level}")


def _attrs(group: zarr.Group) -> dict[str, Any]:
    return dict(group.attrs.asdict())


def _root(path: Path, mode: Any) -> zarr.Group:
    # not the consolidated copy: it is stale while levels are added or removed
    return zarr.open_group(path, mode=mode, zarr_format=3, use_consolidated=False)


def _level_path(sink: ZarrSink, level: int) -> str:
    return f"{OVERVIEW_GROUP}/{level}/labels" if sink.kind == "raster" else str(level)


def _remove_levels(root: zarr.Group, sink: ZarrSink) -> None:
    """Drop a previous (or half-built) pyramid: our level groups/arrays only."""
    if sink.kind == "raster":
        if OVERVIEW_GROUP in root:
            del root[OVERVIEW_GROUP]
    else:
        for name in list(root.array_keys()):
            if name.isdigit() and name != "0":
                del root[name]
    attrs = _attrs(root)
    info = dict(attrs.get("segflow", {}))
    if "pyramid" in info:
        del info["pyramid"]
        root.attrs["segflow"] = info
    if sink.kind == "volume" and "ome" in attrs:
        ome = dict(attrs["ome"])
        multiscales = [dict(m) for m in ome.get("multiscales", [])]
        if multiscales:
            multiscales[0]["datasets"] = multiscales[0]["datasets"][:1]
            ome["multiscales"] = multiscales
            root.attrs["ome"] = ome


def _create_level(
    root: zarr.Group,
    sink: ZarrSink,
    level: int,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    factor: tuple[int, ...],
) -> zarr.Array:
    compressor = ZstdCodec(level=ZSTD_LEVEL)
    common: dict[str, Any] = dict(
        shape=shape,
        chunks=chunks,
        dtype=sink.label_dtype,
        fill_value=sink.label_nodata,
        compressors=compressor,
        chunk_key_encoding=CHUNK_KEY_ENCODING,
    )
    geometry = sink.geometry
    if isinstance(geometry, RasterGeometry):
        group = root.require_group(OVERVIEW_GROUP).create_group(
            str(level),
            attributes={
                "Conventions": "CF-1.8",
                "segflow_overview": {"level": level, "factor": list(factor)},
            },
        )
        transform = raster_level_transform(geometry.transform, factor)
        dims = raster_level_dims(level)
        _write_raster_coords(group, dims, shape, geometry.crs_wkt, transform, compressor)
        return group.create_array(
            "labels",
            dimension_names=list(dims),
            attributes=meta.cf_label_attrs(sink.classes, sink.label_nodata),
            **common,
        )
    return root.create_array(
        str(level),
        dimension_names=list(meta.VOLUME_AXES),
        attributes={"long_name": "class label", "nodata": sink.label_nodata},
        **common,
    )


def _write_raster_coords(
    group: zarr.Group,
    dims: tuple[str, str],
    shape: tuple[int, ...],
    crs_wkt: str | None,
    transform: tuple[float, float, float, float, float, float],
    compressor: ZstdCodec,
) -> None:
    """x, y and spatial_ref of one overview level, as the sink writes them for level 0."""
    height, width = shape
    y, x = meta.pixel_center_coordinates(transform, (height, width))
    y_attrs, x_attrs = meta.cf_xy_coordinate_attrs(crs_wkt)
    for name, values, attrs in ((dims[0], y, y_attrs), (dims[1], x, x_attrs)):
        coord = group.create_array(
            name,
            shape=values.shape,
            chunks=values.shape,
            dtype=np.float64,
            fill_value=np.nan,
            compressors=compressor,
            dimension_names=[name],
            attributes=attrs,
            chunk_key_encoding=CHUNK_KEY_ENCODING,
        )
        coord[:] = values
    ref = group.create_array(
        meta.GRID_MAPPING,
        shape=(),
        dtype=np.int64,
        fill_value=0,
        compressors=None,
        dimension_names=[],
        attributes=meta.cf_grid_mapping_attrs(crs_wkt, transform),
    )
    ref[...] = 0


def _record(
    root: zarr.Group, sink: ZarrSink, levels: list[PyramidLevel], method: Resampling
) -> None:
    geometry = sink.geometry
    entries: list[dict[str, Any]] = []
    for lv in levels:
        entry: dict[str, Any] = {
            "level": lv.level,
            "path": lv.path,
            "factor": list(lv.factor),
            "shape": list(lv.shape),
            "chunk_shape": list(lv.chunk_shape),
        }
        if isinstance(geometry, RasterGeometry):
            entry["group"] = f"{OVERVIEW_GROUP}/{lv.level}"
            entry["dims"] = list(raster_level_dims(lv.level))
            entry["transform"] = list(raster_level_transform(geometry.transform, lv.factor))
        else:
            entry["affine"] = volume_level_affine(geometry.affine, lv.factor).tolist()
        entries.append(entry)
    layout = (
        f"group {OVERVIEW_GROUP}/<n>: labels (y_<n>, x_<n>), coordinates y_<n>, x_<n>, spatial_ref"
        if sink.kind == "raster"
        else "OME-Zarr multiscale arrays <level> beside 0"
    )
    attrs = _attrs(root)
    info = dict(attrs.get("segflow", {}))
    info["pyramid"] = {"resampling": method.value, "layout": layout, "levels": entries}
    root.attrs["segflow"] = info
    if isinstance(geometry, VolumeGeometry) and "ome" in attrs:
        ome = dict(attrs["ome"])
        multiscale = dict(ome["multiscales"][0])
        scale, translation = meta.volume_scale_translation(geometry)
        datasets = list(multiscale["datasets"][:1])
        for lv in levels:
            # block centre of the level's first voxel, in the OME (axis-aligned) description
            shifted = [
                t + (f - 1) / 2.0 * s for t, f, s in zip(translation, lv.factor, scale, strict=True)
            ]
            scaled = [s * f for s, f in zip(scale, lv.factor, strict=True)]
            datasets.append(meta.ome_dataset(lv.path, scaled, shifted))
        multiscale["datasets"] = datasets
        multiscale["type"] = method.value
        ome["multiscales"] = [multiscale, *ome["multiscales"][1:]]
        root.attrs["ome"] = ome


def _consolidate(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(path, zarr_format=3)
