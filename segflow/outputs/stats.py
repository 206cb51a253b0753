"""Per-class statistics of a segflow store: pixel counts, areas and volumes.

Counted chunk by chunk from the stored labels (never the whole array at once).

Areas: a projected (or engineering) CRS gives every pixel the planar area
``|a*e - b*d|`` in CRS units, converted to m² with the axis unit. A geographic CRS
gives geodesic areas on the CRS's ellipsoid (``pyproj.Geod``): for a north-up grid
every pixel of a row has the same footprint, so one polygon per row is exact; a
rotated geographic grid falls back to per-pixel areas in a cylindrical equal-area
projection. Without a CRS only counts are reported. Volumes: ``|det(A)|`` of the
affine's 3x3 part is the voxel volume in mm³ (NIfTI world units), 1 mL = 1000 mm³.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from segflow.errors import OutputError
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.zarr_sink import ZarrSink

M2_PER_HA = 1e4
M2_PER_KM2 = 1e6
MM3_PER_ML = 1e3

RASTER_COLUMNS = ("value", "name", "pixels", "fraction", "area_m2", "area_ha", "area_km2")
VOLUME_COLUMNS = ("value", "name", "voxels", "fraction", "volume_mm3", "volume_ml")


def class_statistics(
    store: str | os.PathLike[str] | ZarrSink, *, allow_incomplete: bool = False
) -> dict[str, Any]:
    """Counts and areas (rasters) or volumes (volumes) per class, as a JSON-ready dict.

    ``fraction`` is the share of the valid (non-nodata) pixels. An incomplete store is
    refused unless ``allow_incomplete`` (unwritten chunks then count as nodata).
    """
    sink = ZarrSink.open_finished(
        store, need_complete=not allow_incomplete, purpose="counting classes"
    )
    done, total = len(sink.done_chunks()), sink.chunks_total
    geometry = sink.geometry
    if isinstance(geometry, VolumeGeometry):
        return _volume_statistics(sink, geometry, done, total)
    assert isinstance(geometry, RasterGeometry)
    return _raster_statistics(sink, geometry, done, total)


# --- rasters ----------------------------------------------------------------------------------


def _raster_statistics(
    sink: ZarrSink, geometry: RasterGeometry, done: int, total: int
) -> dict[str, Any]:
    k = sink.layout.num_classes
    crs = _crs(geometry.crs_wkt)
    method: str | None
    pixel_area: float | None = None
    if crs is None:
        method = None
    elif crs.is_geographic:
        method = "geodesic"
    else:
        method = "planar"
        pixel_area = planar_pixel_area_m2(geometry.transform, crs)
    counts = np.zeros(k + 1, dtype=np.int64)  # last bin: nodata
    areas = np.zeros(k, dtype=np.float64)
    north_up = geometry.transform[1] == 0.0 and geometry.transform[3] == 0.0
    row_cache: dict[int, npt.NDArray[np.float64]] = {}
    for region, labels in _chunks(sink):
        binned = _bins(labels, sink.label_nodata, k)
        counts += np.bincount(binned.ravel(), minlength=k + 1)
        if method != "geodesic":
            continue
        rows, cols = region
        if north_up:
            # one footprint per row: per-row class counts times that row's pixel area
            row_areas = row_cache.get(rows.start)
            if row_areas is None:
                row_cache.clear()  # chunks come row band by row band
                row_areas = row_cache[rows.start] = geodesic_row_areas(
                    geometry.transform, crs, rows.start, rows.stop
                )
            h = binned.shape[0]
            per_row = np.bincount(
                (np.arange(h)[:, None] * (k + 1) + binned).ravel(), minlength=h * (k + 1)
            ).reshape(h, k + 1)
            areas += row_areas @ per_row[:, :k]
        else:
            pixel = equal_area_pixel_areas(geometry.transform, crs, rows, cols)
            areas += np.bincount(binned.ravel(), weights=pixel.ravel(), minlength=k + 1)[:k]
    if method == "planar":
        assert pixel_area is not None
        areas = counts[:k].astype(np.float64) * pixel_area
    valid = int(counts[:k].sum())
    classes = []
    for value, info in enumerate(sink.classes):
        n = int(counts[value])
        entry: dict[str, Any] = {
            "value": value,
            "name": info.name,
            "pixels": n,
            "fraction": n / valid if valid else 0.0,
        }
        area = float(areas[value]) if method is not None else None
        entry["area_m2"] = area
        entry["area_ha"] = None if area is None else area / M2_PER_HA
        entry["area_km2"] = None if area is None else area / M2_PER_KM2
        classes.append(entry)
    return {
        "store": str(sink.path),
        "kind": "raster",
        "complete": done == total,
        "shape": list(sink.layout.spatial_shape),
        "crs": None if crs is None else crs.name,
        "area_method": method,
        "pixel_area_m2": pixel_area,
        "total_pixels": int(counts.sum()),
        "valid_pixels": valid,
        "nodata_pixels": int(counts[k]),
        "valid_area_m2": float(areas.sum()) if method is not None else None,
        "classes": classes,
    }


def planar_pixel_area_m2(transform: tuple[float, ...], crs: Any) -> float:
    """|a*e - b*d| in CRS units, times the square metres per unit² of the CRS axes."""
    a, b, _, d, e, _ = (float(v) for v in transform)
    factors = [float(ax.unit_conversion_factor or 1.0) for ax in crs.axis_info[:2]]
    fx, fy = [*factors, 1.0, 1.0][:2]
    return abs(a * e - b * d) * fx * fy


def pixel_footprint(
    transform: tuple[float, ...], row: float, col: float
) -> tuple[list[float], list[float]]:
    """Corner x (lon) and y (lat) of pixel (row, col), counter-clockwise for a north-up grid."""
    a, b, c, d, e, f = (float(v) for v in transform)
    corners = [(col, row), (col, row + 1), (col + 1, row + 1), (col + 1, row)]
    xs = [c + a * u + b * v for u, v in corners]
    ys = [f + d * u + e * v for u, v in corners]
    return xs, ys


def geodesic_row_areas(
    transform: tuple[float, ...], crs: Any, start: int, stop: int
) -> npt.NDArray[np.float64]:
    """Ellipsoidal area (m²) of one pixel in each row ``start..stop-1`` of a north-up grid."""
    geod = crs.get_geod()
    out = np.empty(stop - start, dtype=np.float64)
    for i, row in enumerate(range(start, stop)):
        lons, lats = pixel_footprint(transform, row, 0)
        area, _ = geod.polygon_area_perimeter(lons, lats)
        out[i] = abs(area)
    return out


def equal_area_pixel_areas(
    transform: tuple[float, ...], crs: Any, rows: slice, cols: slice
) -> npt.NDArray[np.float64]:
    """Per-pixel areas (m²) of a rotated geographic grid, from its corners in an equal-area CRS.

    A cylindrical equal-area projection on the CRS's own ellipsoid, centred on the block,
    keeps areas; the projected quadrilaterals' shoelace areas are then the pixel areas up
    to the curvature of their edges (negligible at pixel scale).
    """
    import pyproj

    a, b, c, d, e, f = (float(v) for v in transform)
    v, u = np.meshgrid(
        np.arange(rows.start, rows.stop + 1, dtype=np.float64),
        np.arange(cols.start, cols.stop + 1, dtype=np.float64),
        indexing="ij",
    )
    lon = c + a * u + b * v
    lat = f + d * u + e * v
    ellps = crs.ellipsoid
    cea = pyproj.CRS.from_proj4(
        f"+proj=cea +lon_0={float(np.mean(lon))} +lat_ts=0 +a={ellps.semi_major_metre} "
        f"+b={ellps.semi_minor_metre} +units=m +no_defs"
    )
    to_cea = pyproj.Transformer.from_crs(crs.geodetic_crs, cea, always_xy=True)
    x, y = to_cea.transform(lon, lat)
    x, y = np.asarray(x), np.asarray(y)
    # quadrilateral (v,u) -> (v,u+1) -> (v+1,u+1) -> (v+1,u), shoelace
    x0, x1, x2, x3 = x[:-1, :-1], x[:-1, 1:], x[1:, 1:], x[1:, :-1]
    y0, y1, y2, y3 = y[:-1, :-1], y[:-1, 1:], y[1:, 1:], y[1:, :-1]
    twice = (x0 * y1 - x1 * y0) + (x1 * y2 - x2 * y1) + (x2 * y3 - x3 * y2) + (x3 * y0 - x0 * y3)
    return np.asarray(np.abs(twice) / 2.0, dtype=np.float64)


# --- volumes ----------------------------------------------------------------------------------


def voxel_volume_mm3(affine: Any) -> float:
    """|det| of the affine's 3x3 part: the volume of one voxel in mm³."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def _volume_statistics(
    sink: ZarrSink, geometry: VolumeGeometry, done: int, total: int
) -> dict[str, Any]:
    k = sink.layout.num_classes
    counts = np.zeros(k + 1, dtype=np.int64)
    for _, labels in _chunks(sink):
        counts += np.bincount(_bins(labels, sink.label_nodata, k).ravel(), minlength=k + 1)
    voxel = voxel_volume_mm3(geometry.affine)
    valid = int(counts[:k].sum())
    classes = [
        {
            "value": value,
            "name": info.name,
            "voxels": int(counts[value]),
            "fraction": int(counts[value]) / valid if valid else 0.0,
            "volume_mm3": int(counts[value]) * voxel,
            "volume_ml": int(counts[value]) * voxel / MM3_PER_ML,
        }
        for value, info in enumerate(sink.classes)
    ]
    return {
        "store": str(sink.path),
        "kind": "volume",
        "complete": done == total,
        "shape": list(sink.layout.spatial_shape),
        "voxel_volume_mm3": voxel,
        "total_voxels": int(counts.sum()),
        "valid_voxels": valid,
        "nodata_voxels": int(counts[k]),
        "valid_volume_ml": valid * voxel / MM3_PER_ML,
        "classes": classes,
    }


# --- writers ----------------------------------------------------------------------------------


def write_statistics_json(stats: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    _parent(target)
    target.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return target


def write_statistics_csv(stats: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """One row per class; empty cells where an area cannot be computed (no CRS)."""
    target = Path(path)
    _parent(target)
    columns = VOLUME_COLUMNS if stats.get("kind") == "volume" else RASTER_COLUMNS
    with target.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for entry in stats["classes"]:
            writer.writerow(["" if entry.get(c) is None else entry[c] for c in columns])
    return target


# --- helpers ----------------------------------------------------------------------------------


def _parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {target.parent}: {exc.strerror or exc}") from exc


def _crs(wkt: str | None) -> Any:
    if wkt is None:
        return None
    import pyproj

    try:
        return pyproj.CRS.from_wkt(wkt)
    except pyproj.exceptions.CRSError as exc:
        raise OutputError(
            f"the store's CRS cannot be read by PROJ ({exc}); areas are unavailable"
        ) from exc


def _bins(labels: npt.NDArray[np.generic], nodata: int, k: int) -> npt.NDArray[np.intp]:
    """Labels as bincount bins: classes 0..k-1, everything else (nodata) in bin k."""
    binned = labels.astype(np.intp)
    binned[(binned >= k) | (labels == nodata)] = k
    return binned


def _chunks(sink: ZarrSink) -> Iterator[tuple[tuple[slice, ...], npt.NDArray[np.generic]]]:
    """Each output chunk's region and labels, row-major (row bands in order)."""
    array = sink.labels_array()
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        yield region, np.asarray(array[region])
