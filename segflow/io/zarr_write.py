"""Creating a segflow store on disk: the folder, the groups, the arrays and their metadata.

Also the few typed doors into zarr that the rest of segflow goes through
(:func:`open_group`, :func:`open_array`, :func:`create_array`), so no other module
imports zarr, and :func:`write_grid_coordinates`, the one writer of the CF x/y
coordinates and grid mapping (level 0 and every overview level use it).

Stores are Zarr v3 unless a raster run asks for v2 (``--zarr-format 2``): GDAL 3.10,
and so QGIS and rasterio, reads v2 arrays but not zarr-python 3's v3 codecs. A v2 array
gets the same data, chunks and attributes, its dimension names as ``_ARRAY_DIMENSIONS``
(xarray's and GDAL's convention), Zstandard through numcodecs, and "/"-separated chunk
keys; the format is read from the store, so every reader and a resume take either.
"""

from __future__ import annotations

import errno
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from segflow.errors import OutputError
from segflow.io import zarr_meta as meta
from segflow.io.classes import ClassInfo
from segflow.io.source import Geometry, RasterGeometry, VolumeGeometry
from segflow.io.stores import StorePath, store_like
from segflow.io.zarr_layout import (
    CHUNK_KEY_ENCODING,
    CHUNK_KEY_ENCODING_V2,
    COORD_CHUNK,
    DONE_PATH,
    ZSTD_LEVEL,
    OutputLayout,
    probability_spec,
)
from segflow.options import ProbabilityMode

StoreArray = zarr.Array[Any]  # any zarr v3 array of a segflow store
StoreGroup = zarr.Group
Mode = Literal["r", "r+"]
Transform = tuple[float, float, float, float, float, float]


# --- typed doors into zarr -----------------------------------------------------------------------


def open_group(path: StorePath, mode: Mode = "r", *, consolidated: bool = True) -> StoreGroup:
    """The store's root group; ``consolidated=False`` while arrays are added or removed
    (the consolidated copy is stale then)."""
    use: bool | None = None if consolidated else False
    return zarr.open_group(store_like(path), mode=mode, use_consolidated=use)


def open_array(path: StorePath, name: str, mode: Mode = "r") -> StoreArray:
    """One array of the store; OutputError when it is missing or damaged."""
    try:
        opened = zarr.open_array(store_like(path), path=name, mode=mode)
    except (OSError, ValueError) as exc:  # missing (FileNotFoundError) or bad JSON
        raise OutputError(f"cannot open {path}/{name}: {exc}") from exc
    if not isinstance(opened, zarr.Array):
        raise OutputError(f"{path}/{name} is not an array")
    return opened


def create_array(
    group: StoreGroup,
    path: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    fill: Any,
    dims: Sequence[str],
    attrs: Mapping[str, Any],
    *,
    compress: bool = True,
) -> StoreArray:
    """An array with segflow's codecs and chunk key encoding, in the group's Zarr format."""
    if group.metadata.zarr_format == 2:
        # v2 has no dimension names, and the fill value is the array's _FillValue
        v2_attrs = {k: v for k, v in attrs.items() if k != "_FillValue"}
        return group.create_array(
            path,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            compressors=numcodecs.Zstd(level=ZSTD_LEVEL) if compress else None,
            attributes={**v2_attrs, "_ARRAY_DIMENSIONS": list(dims)},
            chunk_key_encoding=CHUNK_KEY_ENCODING_V2,
        )
    return group.create_array(
        path,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill,
        compressors=ZstdCodec(level=ZSTD_LEVEL) if compress else None,
        dimension_names=list(dims),
        attributes=dict(attrs),
        chunk_key_encoding=CHUNK_KEY_ENCODING,
    )


def group_attrs(group: StoreGroup) -> dict[str, Any]:
    return dict(group.attrs.asdict())


def consolidate_store(target: StorePath) -> None:
    """Consolidated metadata lets xarray.open_zarr open the store in one read, without a warning.

    Call again after adding arrays (e.g. overview levels): readers that use the
    consolidated copy do not see arrays added after it. Zarr warns that consolidation is
    not in the v3 spec yet; readers that ignore it read the per-array metadata.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(store_like(target))


def chunk_keys(path: Path, name: str, ndim: int) -> list[tuple[int, ...]]:
    """Indices of the chunk objects of array ``name`` present on disk (one folder walk).

    Segflow stores are local folders with "/"-separated chunk keys (``c/<i>/<j>`` in
    v3, ``<i>/<j>`` in v2), so the chunk objects are files at those paths.
    """
    root = path / name / "c" if (path / name / "zarr.json").is_file() else path / name
    found: list[tuple[int, ...]] = []
    for folder, _, files in os.walk(root):
        parts = Path(folder).relative_to(root).parts
        if len(parts) != ndim - 1 or not all(p.isdigit() for p in parts):
            continue
        head = tuple(int(p) for p in parts)
        found += [(*head, int(f)) for f in files if f.isdigit()]  # skips temporary files
    return found


# --- the folder ------------------------------------------------------------------------------------


def local_path(path: str | os.PathLike[str]) -> Path:
    if "://" in str(path):
        raise OutputError(f"output {path} is a URI; segflow writes local (or mounted) paths only")
    return Path(path).expanduser()


def check_can_create(target: Path) -> None:
    """Fail before writing anything when the store's folder cannot be created."""
    parent = target.parent
    while not parent.exists():
        if parent.is_symlink() or parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot create {target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot create {target}: {parent} is not writable; choose another output"
        )


def remove_store(target: Path) -> None:
    """--overwrite: delete an existing zarr store, and nothing that is not one."""
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()  # left by a run that stopped before writing metadata
        return
    is_store = target.is_dir() and any(
        (target / marker).is_file() for marker in ("zarr.json", ".zgroup", ".zarray")
    )
    if not is_store:
        raise OutputError(f"{target} exists and is not a zarr store; refusing to delete it")
    try:
        shutil.rmtree(target)
    except OSError as exc:
        raise OutputError(f"cannot remove the existing store {target}: {exc}") from exc


def make_dir(target: Path) -> None:
    try:
        target.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create {target}: {exc.strerror or exc}") from exc


# --- a new store -----------------------------------------------------------------------------------


def write_new_store(
    target: StorePath,
    info: dict[str, Any],
    layout: OutputLayout,
    geometry: Geometry,
    classes: Sequence[ClassInfo],
) -> None:
    """The root group with its attributes, the completion record and the empty data arrays."""
    attrs: dict[str, Any] = {"segflow": info}
    if isinstance(geometry, RasterGeometry):
        attrs["Conventions"] = "CF-1.8"
    elif layout.write_labels:  # without labels the root is a plain group over "probabilities"
        attrs["ome"] = meta.ome_label_image_attrs(
            target.stem, geometry, classes, layout.label_nodata
        )
    # the caller made it empty, or not at all (stores in object storage are made locally first)
    existed = isinstance(target, Path) and target.is_dir() and any(target.iterdir())
    try:
        fmt: Literal[2, 3] = 2 if layout.zarr_format == 2 else 3
        root = zarr.create_group(store_like(target), zarr_format=fmt, attributes=attrs)
        dims = ("y", "x") if isinstance(geometry, RasterGeometry) else meta.VOLUME_AXES
        done_attrs = {"description": "1 where that output chunk is written"}
        grid = layout.chunk_grid_shape
        done_dims = [f"chunk_{d}" for d in dims]
        create_array(
            root,
            DONE_PATH,
            grid,
            (1,) * len(dims),
            np.uint8,
            0,
            done_dims,
            done_attrs,
            compress=False,
        )
        if isinstance(geometry, RasterGeometry):
            _create_raster_arrays(root, layout, geometry, classes)
        else:
            _create_volume_arrays(root, layout, geometry, target.stem, info["probabilities"])
        consolidate_store(target)
    except OSError as exc:
        if not existed and isinstance(
            target, Path
        ):  # half a store would pass for an interrupted run
            shutil.rmtree(target, ignore_errors=True)
        fix = "free some space" if exc.errno == errno.ENOSPC else "check its permissions"
        raise OutputError(
            f"cannot write {target} ({exc.strerror or exc}); {fix} or choose another output"
        ) from exc


def write_grid_coordinates(
    group: StoreGroup,
    dims: tuple[str, str],
    shape: tuple[int, ...],
    crs_wkt: str | None,
    transform: Transform,
) -> None:
    """The CF pixel-centre coordinates (y, x) and the ``spatial_ref`` grid mapping of a grid."""
    height, width = shape
    y, x = meta.pixel_center_coordinates(transform, (height, width))
    y_attrs, x_attrs = meta.cf_xy_coordinate_attrs(crs_wkt)
    for name, values, attrs in ((dims[0], y, y_attrs), (dims[1], x, x_attrs)):
        chunk = (min(len(values), COORD_CHUNK),)
        coord = create_array(group, name, values.shape, chunk, np.float64, np.nan, [name], attrs)
        coord[:] = values
    grid_mapping = meta.cf_grid_mapping_attrs(crs_wkt, transform)
    # fill None: the v3 default (0), and no _FillValue in v2 that xarray would mask with
    create_array(group, meta.GRID_MAPPING, (), (), np.int64, None, [], grid_mapping, compress=False)


def _create_raster_arrays(
    root: StoreGroup, layout: OutputLayout, geometry: RasterGeometry, classes: Sequence[ClassInfo]
) -> None:
    write_grid_coordinates(
        root, ("y", "x"), layout.spatial_shape, geometry.crs_wkt, geometry.transform
    )
    nodata = layout.label_nodata
    if layout.write_labels:
        label_attrs = meta.cf_label_attrs(classes, nodata)
        shape, chunks = layout.spatial_shape, layout.clipped_chunks
        create_array(
            root, "labels", shape, chunks, layout.label_dtype, nodata, ("y", "x"), label_attrs
        )
    if layout.probabilities is not ProbabilityMode.NONE:
        spec = probability_spec(layout)
        prob_attrs = meta.cf_probability_attrs(layout.probabilities)
        dims = ("class", "y", "x")
        create_array(
            root, "probabilities", spec.shape, spec.chunks, spec.dtype, spec.fill, dims, prob_attrs
        )
        k = layout.num_classes
        class_attrs = {"long_name": "class index", "flag_meanings": meta.flag_meanings(classes)}
        index = create_array(root, "class", (k,), (k,), np.uint16, None, ("class",), class_attrs)
        index[:] = np.arange(k)
    if layout.uncertainty:
        shape, chunks = layout.spatial_shape, layout.clipped_chunks
        attrs = meta.cf_uncertainty_attrs()
        nodata = meta.UNCERTAINTY_NODATA
        create_array(root, "uncertainty", shape, chunks, np.uint8, nodata, ("y", "x"), attrs)


def _create_volume_arrays(
    root: StoreGroup,
    layout: OutputLayout,
    geometry: VolumeGeometry,
    name: str,
    encoding: Mapping[str, Any] | None,
) -> None:
    if layout.write_labels:
        attrs = meta.volume_label_attrs(layout.label_nodata)
        shape, chunks, nodata = layout.spatial_shape, layout.clipped_chunks, layout.label_nodata
        create_array(root, "0", shape, chunks, layout.label_dtype, nodata, meta.VOLUME_AXES, attrs)
    if layout.probabilities is not ProbabilityMode.NONE:
        ome = meta.ome_probability_image_attrs(f"{name} probabilities", geometry)
        group = root.create_group("probabilities", attributes={"ome": ome})
        spec = probability_spec(layout)
        attrs = {"long_name": "class probability", **(encoding or {})}
        dims = ["c", *meta.VOLUME_AXES]
        create_array(group, "0", spec.shape, spec.chunks, spec.dtype, spec.fill, dims, attrs)
    if layout.uncertainty:
        ome = meta.ome_scalar_image_attrs(f"{name} uncertainty", geometry)
        group = root.create_group("uncertainty", attributes={"ome": ome})
        shape, chunks = layout.spatial_shape, layout.clipped_chunks
        nodata = meta.UNCERTAINTY_NODATA
        attrs = meta.uncertainty_attrs()
        create_array(group, "0", shape, chunks, np.uint8, nodata, meta.VOLUME_AXES, attrs)
