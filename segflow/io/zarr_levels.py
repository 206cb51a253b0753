"""Where the levels of a label pyramid live inside a segflow store, and their metadata.

Rasters: level ``n`` is the group ``overviews/<n>``, laid out exactly like level 0
(``labels`` (y, x), ``x``, ``y``, ``spatial_ref`` with the level's own GeoTransform),
so ``xarray.open_zarr(store, group="overviews/1")`` plus rioxarray opens it like the
full-resolution data. Volumes: level ``n`` is the array ``<n>`` beside ``0`` in the
OME-Zarr label image, listed in ``ome.multiscales[0].datasets``. Either way the root
``segflow`` attribute records the levels under ``pyramid``.

:mod:`segflow.outputs.pyramid` computes the levels; this module stores them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from segflow.errors import OutputError
from segflow.io import zarr_meta as meta
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_sink import ZarrSink
from segflow.io.zarr_write import (
    StoreArray,
    Transform,
    consolidate_store,
    create_array,
    group_attrs,
    open_array,
    open_group,
    write_grid_coordinates,
)

OVERVIEW_GROUP = "overviews"


@dataclass(frozen=True)
class PyramidLevel:
    """One stored level; ``factor`` is relative to level 0, per spatial axis."""

    level: int
    path: str  # the level's label array inside the store
    factor: tuple[int, ...]
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]


# --- level geometry ----------------------------------------------------------------------------


def raster_level_transform(transform: Sequence[float], factor: Sequence[int]) -> Transform:
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


def raster_level_dims(level: int) -> tuple[str, str]:
    """Dimension names of an overview level: ``y_<n>``, ``x_<n>``.

    Not ``y``/``x``: the overview groups sit below level 0, and ``xarray.open_datatree``
    refuses a child whose dimensions share the parent's names but not its sizes.
    rioxarray finds them through their CF ``axis`` attributes.
    """
    return (f"y_{level}", f"x_{level}")


def level_path(sink: ZarrSink, level: int) -> str:
    return f"{OVERVIEW_GROUP}/{level}/labels" if sink.kind == "raster" else str(level)


# --- reading -------------------------------------------------------------------------------------


def pyramid_levels(store: str | os.PathLike[str] | ZarrSink) -> list[PyramidLevel]:
    """The levels recorded in the store, finest first; empty when it has no pyramid."""
    sink = store if isinstance(store, ZarrSink) else ZarrSink.open(store)
    info = group_attrs(open_group(sink.path, consolidated=False)).get("segflow", {})
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


def open_level(store: str | os.PathLike[str] | ZarrSink, level: int) -> StoreArray:
    """The label array of ``level`` (0 = full resolution), read-only."""
    sink = store if isinstance(store, ZarrSink) else ZarrSink.open(store)
    if level == 0:
        return sink.labels_array()
    for entry in pyramid_levels(sink):
        if entry.level == level:
            return open_array(sink.path, entry.path)
    raise OutputError(f"{sink.path} has no pyramid level {level}; build it with `segflow pyramid`")


# --- writing -------------------------------------------------------------------------------------


def remove_levels(sink: ZarrSink) -> None:
    """Drop a previous (or half-built) pyramid: our level groups/arrays only."""
    root = open_group(sink.path, "r+", consolidated=False)
    if sink.kind == "raster":
        if OVERVIEW_GROUP in root:
            del root[OVERVIEW_GROUP]
    else:
        for name in list(root.array_keys()):
            if name.isdigit() and name != "0":
                del root[name]
    attrs = group_attrs(root)
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


def create_level(
    sink: ZarrSink,
    level: int,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    factor: tuple[int, ...],
) -> StoreArray:
    """The empty label array of one level (with its coordinates for rasters)."""
    root = open_group(sink.path, "r+", consolidated=False)
    dtype, nodata = sink.label_dtype, sink.label_nodata
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
        write_grid_coordinates(group, dims, shape, geometry.crs_wkt, transform)
        attrs = meta.cf_label_attrs(sink.classes, nodata)
        return create_array(group, "labels", shape, chunks, dtype, nodata, dims, attrs)
    attrs = meta.volume_label_attrs(nodata)
    ome = group_attrs(root).get("ome")  # level 0's axis names, those of old stores included
    axes = meta.VOLUME_AXES if ome is None else meta.stored_volume_axes(ome)
    return create_array(root, str(level), shape, chunks, dtype, nodata, axes, attrs)


def record_levels(sink: ZarrSink, levels: Sequence[PyramidLevel], resampling: str) -> None:
    """List the built levels in the ``segflow`` (and for volumes ``ome``) attributes."""
    root = open_group(sink.path, "r+", consolidated=False)
    attrs = group_attrs(root)
    info = dict(attrs.get("segflow", {}))
    info["pyramid"] = {
        "resampling": resampling,
        "layout": _layout_note(sink),
        "levels": [_level_entry(sink, lv) for lv in levels],
    }
    root.attrs["segflow"] = info
    geometry = sink.geometry
    if isinstance(geometry, VolumeGeometry) and "ome" in attrs:
        root.attrs["ome"] = _ome_with_levels(attrs["ome"], geometry, levels, resampling)
    consolidate_store(sink.path)


def _layout_note(sink: ZarrSink) -> str:
    if sink.kind == "raster":
        return (
            f"group {OVERVIEW_GROUP}/<n>: labels (y_<n>, x_<n>), coordinates y_<n>, x_<n>, "
            "spatial_ref"
        )
    return "OME-Zarr multiscale arrays <level> beside 0"


def _level_entry(sink: ZarrSink, lv: PyramidLevel) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "level": lv.level,
        "path": lv.path,
        "factor": list(lv.factor),
        "shape": list(lv.shape),
        "chunk_shape": list(lv.chunk_shape),
    }
    geometry = sink.geometry
    if isinstance(geometry, RasterGeometry):
        entry["group"] = f"{OVERVIEW_GROUP}/{lv.level}"
        entry["dims"] = list(raster_level_dims(lv.level))
        entry["transform"] = list(raster_level_transform(geometry.transform, lv.factor))
    else:
        entry["affine"] = volume_level_affine(geometry.affine, lv.factor).tolist()
    return entry


def _ome_with_levels(
    ome_attrs: dict[str, Any],
    geometry: VolumeGeometry,
    levels: Sequence[PyramidLevel],
    resampling: str,
) -> dict[str, Any]:
    ome = dict(ome_attrs)
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
    multiscale["type"] = resampling
    ome["multiscales"] = [multiscale, *ome["multiscales"][1:]]
    return ome


__all__ = [
    "OVERVIEW_GROUP",
    "PyramidLevel",
    "create_level",
    "level_path",
    "open_level",
    "pyramid_levels",
    "raster_level_dims",
    "raster_level_transform",
    "record_levels",
    "remove_levels",
    "volume_level_affine",
]
