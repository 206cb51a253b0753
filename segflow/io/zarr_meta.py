"""Pure builders of the metadata a segflow Zarr store carries.

Nothing here touches a store: functions turn geometry, classes and options into
JSON-ready dicts (CF conventions for rasters, OME-Zarr 0.5 for volumes) and
back. :mod:`segflow.io.zarr_sink` writes what these return.

Every float that describes geometry is stored as a JSON number (Python's
shortest round-trip repr), so reading it back gives the identical float.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import PurePath
from typing import Any

import numpy as np
import numpy.typing as npt

from segflow.io.classes import ClassInfo
from segflow.io.source import Geometry, RasterGeometry, VolumeGeometry

STORE_FORMAT = "segflow.zarr"
STORE_FORMAT_VERSION = 1
OME_VERSION = "0.5"
GRID_MAPPING = "spatial_ref"  # name of the CF grid-mapping variable (rioxarray's default)
# A volume's array axes 0, 1, 2 are the input file's voxel axes i, j, k. OME-only tools look
# for spatial axes named z, y, x, so the store names them so (OME orders space slowest first);
# the names are labels of the voxel axes, not world directions (see volume_scale_translation).
VOLUME_AXES = ("z", "y", "x")
LEGACY_VOLUME_AXES = ("i", "j", "k")  # stores written before carry these names
PROBABILITY_SCALE = 1.0 / 254.0  # uint8 probabilities: p = q / 254, 255 = nodata
UNCERTAINTY_SCALE = 1.0 / 254.0  # uint8 uncertainty: H(p) / ln K = u / 254, 255 = nodata
UNCERTAINTY_NODATA = 255
UNCERTAINTY_FORMULA = (
    "u = rint(254 * clip(H(p) / ln(K), 0, 1)), H(p) = -sum_k p_k ln(p_k) with 0 ln(0) = 0, "
    "p the blended class probabilities of the pixel (the labels are their argmax), K the "
    "number of classes; one sigmoid channel q is the two classes (1 - q, q), K = 2; "
    "255 = nodata"
)

JSON = Any  # JSON-compatible value (dict / list / str / int / float / bool / None)


# --- JSON ---------------------------------------------------------------------------------


def jsonable(value: Any) -> JSON:
    """Turn a provenance value into strict JSON: tuples -> lists, paths -> str, numpy -> Python.

    Non-finite floats become the strings "NaN" / "Infinity" / "-Infinity" (the Zarr v3
    convention) because bare NaN is not valid JSON and other readers reject it.
    """
    if isinstance(value, Enum):  # before str: a StrEnum is a str
        return jsonable(value.value)
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [jsonable(v) for v in items]
    model_dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(model_dump):
        return jsonable(model_dump(mode="json"))
    return str(value)


# --- stored values ------------------------------------------------------------------------


def label_dtype_for(num_classes: int) -> np.dtype[Any]:
    """uint8 up to 255 classes (255 is nodata), uint16 above (65535 is nodata)."""
    return np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)


def quantize_probabilities(
    probabilities: npt.NDArray[np.floating[Any]], mode: str
) -> npt.NDArray[np.generic]:
    """Probabilities in [0, 1] (NaN = nodata) as stored.

    uint8: round(p * 254), 255 where nodata (values are clipped to [0, 1] first);
    float16: a plain cast, NaN stays NaN.
    """
    if mode == "float16":
        return np.asarray(probabilities).astype(np.float16)
    if mode != "uint8":
        raise ValueError(f"no probabilities are stored in mode {mode!r}")
    p = np.asarray(probabilities, dtype=np.float32)
    nodata = np.isnan(p)
    q = np.rint(np.clip(np.where(nodata, 0.0, p), 0.0, 1.0) * 254.0).astype(np.uint8)
    q[nodata] = 255
    return q


def dequantize_probabilities(stored: npt.NDArray[np.generic], mode: str) -> npt.NDArray[np.float32]:
    """Inverse of :func:`quantize_probabilities`: float32 in [0, 1], NaN where nodata."""
    if mode == "float16":
        return np.asarray(stored).astype(np.float32)
    q = np.asarray(stored)
    p = q.astype(np.float32) * np.float32(PROBABILITY_SCALE)
    p[q == 255] = np.nan
    return p


def store_info(
    kind: str,
    layout: Mapping[str, Any],
    arrays: Mapping[str, str | None],
    classes: Sequence[ClassInfo],
    geometry: Geometry,
    provenance: Mapping[str, Any],
    fingerprint: str,
) -> dict[str, JSON]:
    """The root ``segflow`` attribute: everything needed to reopen, check and resume a store."""
    dtype = label_dtype_for(int(layout["num_classes"]))
    mode = layout["probabilities"]
    probabilities: dict[str, JSON] | None = None
    if mode == "uint8":
        probabilities = {"dtype": "uint8", "scale": PROBABILITY_SCALE, "nodata": 255}
    elif mode == "float16":
        probabilities = {"dtype": "float16", "nodata": "NaN"}
    info: dict[str, JSON] = {
        "format": STORE_FORMAT,
        "format_version": STORE_FORMAT_VERSION,
        "kind": kind,
        "complete": False,
        "fingerprint": str(fingerprint),
        "layout": jsonable(layout),
        "arrays": dict(arrays),
        "labels": {"dtype": dtype.name, "nodata": int(np.iinfo(dtype).max)},
        "probabilities": probabilities,
        "classes": classes_to_attrs(classes),
        "geometry": geometry_to_attrs(geometry),
        "provenance": jsonable(provenance),
    }
    if layout.get("uncertainty"):  # only when written: other stores keep their attributes
        info["uncertainty"] = {
            "dtype": "uint8",
            "scale": UNCERTAINTY_SCALE,
            "nodata": UNCERTAINTY_NODATA,
            "formula": UNCERTAINTY_FORMULA,
        }
    return info


# --- geometry -------------------------------------------------------------------------------


def geometry_to_attrs(geometry: Geometry) -> dict[str, JSON]:
    """Exact, JSON-ready description of a source geometry (inverse: :func:`geometry_from_attrs`)."""
    if isinstance(geometry, RasterGeometry):
        return {
            "type": "raster",
            "crs_wkt": geometry.crs_wkt,
            "transform": [float(v) for v in geometry.transform],
            "georeferenced": bool(geometry.georeferenced),
        }
    return {
        "type": "volume",
        "affine": [[float(v) for v in row] for row in geometry.affine],
        "sform_code": int(geometry.sform_code),
        "qform_code": int(geometry.qform_code),
        "orientation": list(geometry.orientation),
        "zooms": [float(v) for v in geometry.zooms],
    }


def geometry_from_attrs(attrs: Mapping[str, Any]) -> Geometry:
    """Rebuild the geometry written by :func:`geometry_to_attrs`; ValueError if malformed."""
    try:
        kind = attrs["type"]
        if kind == "raster":
            transform = tuple(float(v) for v in attrs["transform"])
            if len(transform) != 6:
                raise ValueError(f"transform has {len(transform)} values, expected 6")
            crs = attrs["crs_wkt"]
            return RasterGeometry(
                crs_wkt=None if crs is None else str(crs),
                transform=(
                    transform[0],
                    transform[1],
                    transform[2],
                    transform[3],
                    transform[4],
                    transform[5],
                ),
                georeferenced=bool(attrs["georeferenced"]),
            )
        if kind == "volume":
            affine = tuple(tuple(float(v) for v in row) for row in attrs["affine"])
            if len(affine) != 4 or any(len(row) != 4 for row in affine):
                raise ValueError("affine is not 4x4")
            o = [str(c) for c in attrs["orientation"]]
            z = [float(v) for v in attrs["zooms"]]
            if len(o) != 3 or len(z) != 3:
                raise ValueError("orientation and zooms need 3 values each")
            return VolumeGeometry(
                affine=affine,
                sform_code=int(attrs["sform_code"]),
                qform_code=int(attrs["qform_code"]),
                orientation=(o[0], o[1], o[2]),
                zooms=(z[0], z[1], z[2]),
            )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"geometry attributes are incomplete: {exc!r}") from exc
    raise ValueError(f"unknown geometry type {kind!r}")


# --- classes --------------------------------------------------------------------------------


def classes_to_attrs(classes: Sequence[ClassInfo]) -> list[dict[str, JSON]]:
    return [
        {"value": value, "name": c.name, "color": [int(v) for v in c.color]}
        for value, c in enumerate(classes)
    ]


def classes_from_attrs(attrs: Sequence[Mapping[str, Any]]) -> tuple[ClassInfo, ...]:
    ordered = sorted(attrs, key=lambda c: int(c["value"]))
    return tuple(
        ClassInfo(
            name=str(c["name"]), color=(int(c["color"][0]), int(c["color"][1]), int(c["color"][2]))
        )
        for c in ordered
    )


def flag_meanings(classes: Sequence[ClassInfo]) -> str:
    """CF flag_meanings: blank-separated words, so blanks inside a name become underscores."""
    return " ".join("_".join(c.name.split()) or f"class_{i}" for i, c in enumerate(classes))


# --- CF (rasters) ---------------------------------------------------------------------------


def geotransform_string(transform: Sequence[float]) -> str:
    """GDAL GeoTransform "c a b f d e" from rasterio's (a, b, c, d, e, f), exact floats."""
    a, b, c, d, e, f = (float(v) for v in transform)
    return " ".join(repr(v) for v in (c, a, b, f, d, e))


def cf_grid_mapping_attrs(crs_wkt: str | None, transform: Sequence[float]) -> dict[str, JSON]:
    """Attributes of the 0-d ``spatial_ref`` variable, as rioxarray and GDAL read them.

    ``spatial_ref`` and ``crs_wkt`` hold the source's WKT unchanged (rioxarray reads
    ``spatial_ref`` first); the CF grid-mapping parameters come from pyproj when it can
    express the CRS. Without a CRS only the GeoTransform is written.
    """
    attrs: dict[str, JSON] = {}
    if crs_wkt is not None:
        attrs.update(_pyproj_cf(crs_wkt))
        attrs["crs_wkt"] = crs_wkt
        attrs["spatial_ref"] = crs_wkt
    attrs["GeoTransform"] = geotransform_string(transform)
    return attrs


def _pyproj_cf(crs_wkt: str) -> dict[str, JSON]:
    import pyproj

    try:
        crs = pyproj.CRS.from_wkt(crs_wkt)
        with warnings.catch_warnings():  # pyproj warns when CF cannot hold every detail
            warnings.simplefilter("ignore")
            cf = crs.to_cf()
    except pyproj.exceptions.CRSError:
        return {}
    return {k: jsonable(v) for k, v in cf.items() if k != "crs_wkt"}


def cf_xy_coordinate_attrs(crs_wkt: str | None) -> tuple[dict[str, JSON], dict[str, JSON]]:
    """CF attributes of the y and x coordinate variables (axis, standard_name, units)."""
    y: dict[str, JSON] = {"axis": "Y", "long_name": "y coordinate of pixel centre"}
    x: dict[str, JSON] = {"axis": "X", "long_name": "x coordinate of pixel centre"}
    if crs_wkt is None:
        y["units"] = x["units"] = "pixel"
        return y, x
    import pyproj

    try:
        cs = pyproj.CRS.from_wkt(crs_wkt).cs_to_cf()
    except pyproj.exceptions.CRSError:
        return y, x
    for entry in cs:
        target = {"Y": y, "X": x}.get(str(entry.get("axis")))
        if target is not None:
            target.update({k: jsonable(v) for k, v in entry.items()})
    return y, x


def pixel_center_coordinates(
    transform: Sequence[float], shape_yx: tuple[int, int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """1-D pixel-centre coordinates (y, x) along the first column / row of the grid.

    rioxarray rebuilds a north-up transform as ``first_centre - step / 2`` (the exact
    transform is also in ``spatial_ref.GeoTransform``, which it uses for rotated grids).
    That gives the origin back bit for bit unless the origin and the first centre lie in
    different binades (e.g. origin 7949.37, step 692.26), where no float centre can.
    """
    a, b, c, d, e, f = (float(v) for v in transform)
    height, width = shape_yx
    x = c + (np.arange(width, dtype=np.float64) + 0.5) * a + 0.5 * b
    y = f + 0.5 * d + (np.arange(height, dtype=np.float64) + 0.5) * e
    return y, x


def cf_label_attrs(classes: Sequence[ClassInfo], nodata: int) -> dict[str, JSON]:
    """CF attributes of the raster ``labels`` variable.

    Nodata is the CF ``_FillValue``, as for probabilities and as GDAL reads it: xarray
    masks it (NaN in floats; ``mask_and_scale=False`` keeps the stored integers) and
    rioxarray reports it as ``encoded_nodata``. Stores written before carried it as
    ``nodata``; segflow itself reads nodata from the store's ``segflow`` layout, so
    those stay readable as they are.
    """
    return {
        "long_name": "class label",
        "grid_mapping": GRID_MAPPING,
        "coordinates": GRID_MAPPING,  # keeps spatial_ref a coordinate under open_zarr
        "flag_values": list(range(len(classes))),
        "flag_meanings": flag_meanings(classes),
        "class_colors": [[int(v) for v in c.color] for c in classes],
        "_FillValue": int(nodata),
    }


def volume_label_attrs(nodata: int) -> dict[str, JSON]:
    """Attributes of a volume's label array (any level): nodata as ``_FillValue``, as rasters."""
    return {"long_name": "class label", "_FillValue": int(nodata)}


def cf_probability_attrs(mode: str) -> dict[str, JSON]:
    """CF attributes of the raster ``probabilities`` variable (class, y, x).

    uint8 probabilities are CF-packed (``scale_factor`` + ``_FillValue``), so
    ``xarray.open_zarr`` decodes them to floats in [0, 1] with NaN where nodata.
    """
    attrs: dict[str, JSON] = {
        "long_name": "class probability",
        "units": "1",
        "grid_mapping": GRID_MAPPING,
        "coordinates": GRID_MAPPING,
        "valid_range": [0, 254] if mode == "uint8" else [0.0, 1.0],
    }
    if mode == "uint8":
        attrs["scale_factor"] = PROBABILITY_SCALE
        attrs["add_offset"] = 0.0
        attrs["_FillValue"] = 255
    return attrs


def uncertainty_attrs() -> dict[str, JSON]:
    """Attributes of the uncertainty array (rasters and volumes): CF-packed like uint8
    probabilities, so ``xarray.open_zarr`` decodes it to H(p) / ln K in [0, 1], NaN nodata."""
    return {
        "long_name": "normalized entropy of the class probabilities",
        "units": "1",
        "valid_range": [0, 254],
        "scale_factor": UNCERTAINTY_SCALE,
        "add_offset": 0.0,
        "_FillValue": UNCERTAINTY_NODATA,
        "formula": UNCERTAINTY_FORMULA,
    }


def cf_uncertainty_attrs() -> dict[str, JSON]:
    """CF attributes of the raster ``uncertainty`` variable (y, x)."""
    return {**uncertainty_attrs(), "grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING}


# --- OME-Zarr 0.5 (volumes) ------------------------------------------------------------------


def ome_space_axes(
    names: Sequence[str] = VOLUME_AXES, unit: str = "millimeter"
) -> list[dict[str, JSON]]:
    return [{"name": name, "type": "space", "unit": unit} for name in names]


def stored_volume_axes(ome_attrs: Mapping[str, Any]) -> tuple[str, str, str]:
    """Names of the spatial axes in a volume store's ``ome`` block.

    ``z, y, x`` for current stores, ``i, j, k`` for stores written before; arrays added
    to a store (pyramid levels) take the names its level 0 already has.
    """
    try:
        axes = ome_attrs["multiscales"][0]["axes"]
        names = tuple(str(a["name"]) for a in axes if a.get("type") == "space")
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"the store's OME axes are unreadable: {exc!r}") from exc
    if names not in (VOLUME_AXES, LEGACY_VOLUME_AXES):
        raise ValueError(f"unexpected OME space axes {list(names)}; segflow writes z, y, x")
    return names[0], names[1], names[2]


def ome_channel_axis(name: str = "c") -> dict[str, JSON]:
    return {"name": name, "type": "channel"}


def ome_dataset(path: str, scale: Sequence[float], translation: Sequence[float]) -> dict[str, JSON]:
    """One resolution level; a pyramid appends more of these (coarser scale, shifted origin)."""
    return {
        "path": path,
        "coordinateTransformations": [
            {"type": "scale", "scale": [float(v) for v in scale]},
            {"type": "translation", "translation": [float(v) for v in translation]},
        ],
    }


def ome_multiscale(
    name: str, axes: Sequence[Mapping[str, JSON]], datasets: Sequence[Mapping[str, JSON]]
) -> dict[str, JSON]:
    return {"name": name, "axes": [dict(a) for a in axes], "datasets": [dict(d) for d in datasets]}


def volume_scale_translation(geometry: VolumeGeometry) -> tuple[list[float], list[float]]:
    """OME scale (voxel sizes) and translation (affine origin) of a volume, per array axis.

    Array axis n (OME ``z``, ``y``, ``x`` for n = 0, 1, 2) is voxel axis i, j, k of the
    input file. Scales stay positive and there is no rotation, so these describe the
    world only for grids whose voxel axes run along +x, +y, +z; flips, axis swaps and
    rotation live in the exact affine of the segflow geometry attributes (which segflow's
    readers and the NIfTI export use) and in ``segflow export --to ome-zarr``.
    """
    return [float(z) for z in geometry.zooms], [float(row[3]) for row in geometry.affine[:3]]


def ome_image_label(classes: Sequence[ClassInfo], nodata: int) -> dict[str, JSON]:
    """``image-label`` block: one colour and one property entry per class, plus nodata (transparent)."""
    colors: list[JSON] = [
        {"label-value": v, "rgba": [*(int(x) for x in c.color), 255]} for v, c in enumerate(classes)
    ]
    properties: list[JSON] = [{"label-value": v, "name": c.name} for v, c in enumerate(classes)]
    colors.append({"label-value": int(nodata), "rgba": [0, 0, 0, 0]})
    properties.append({"label-value": int(nodata), "name": "nodata", "nodata": True})
    return {"version": OME_VERSION, "colors": colors, "properties": properties}


def ome_label_image_attrs(
    name: str, geometry: VolumeGeometry, classes: Sequence[ClassInfo], nodata: int, path: str = "0"
) -> dict[str, JSON]:
    """``ome`` attributes of a label image whose level-0 array is ``path`` (z, y, x = i, j, k)."""
    scale, translation = volume_scale_translation(geometry)
    multiscale = ome_multiscale(name, ome_space_axes(), [ome_dataset(path, scale, translation)])
    return {
        "version": OME_VERSION,
        "multiscales": [multiscale],
        "image-label": ome_image_label(classes, nodata),
    }


def ome_scalar_image_attrs(name: str, geometry: VolumeGeometry, path: str = "0") -> dict[str, JSON]:
    """``ome`` attributes of a one-value-per-voxel image at ``path`` (z, y, x = i, j, k)."""
    scale, translation = volume_scale_translation(geometry)
    dataset = ome_dataset(path, scale, translation)
    return {
        "version": OME_VERSION,
        "multiscales": [ome_multiscale(name, ome_space_axes(), [dataset])],
    }


def ome_probability_image_attrs(
    name: str, geometry: VolumeGeometry, path: str = "0"
) -> dict[str, JSON]:
    """``ome`` attributes of the probabilities image at ``path`` (c, z, y, x = c, i, j, k)."""
    scale, translation = volume_scale_translation(geometry)
    axes = [ome_channel_axis(), *ome_space_axes()]
    dataset = ome_dataset(path, [1.0, *scale], [0.0, *translation])
    return {"version": OME_VERSION, "multiscales": [ome_multiscale(name, axes, [dataset])]}
