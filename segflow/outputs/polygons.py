"""Polygons of a raster label store: one per 4-connected component of each class.

The components come from :mod:`segflow.outputs.components` (face connectivity, the
connectivity of ``rasterio.features.shapes``), so a component cut by chunk borders
keeps one id. The image is vectorised in strips of whole rows (about
``STRIP_PIXELS`` pixels each, cut from one chunk row at a time) in its pixel
coordinates; a component inside one strip is written at once, the pieces of one that
crosses strips are joined exactly by :mod:`segflow.outputs.stitch` (pixel corners are
integers) and written when its last strip is done. Geometries are then moved to the
store's CRS with its affine transform. Holes are kept.

Options: ``min_area`` drops the polygons of components smaller than an area (CRS
units², pixels, or m² / ha / km² in a projected CRS), decided on the component's
exact area (pixels x pixel area), so before any simplification; ``simplify`` runs
``shapely.simplify(tolerance, preserve_topology=True)`` on each polygon in CRS units:
each polygon stays valid with its holes, but it is simplified on its own, so the
shared edge of two neighbours may no longer match exactly. The ``pixels`` and
``area`` attributes stay those of the component.

Memory: one chunk row of ids (int32), one strip in GDAL, the open boundary of the
components still open (see :mod:`segflow.outputs.stitch`) and one batch of features
(at most ``BATCH`` features or about ``BATCH_VERTICES`` vertices, so a polygon that
spans the image is written nearly alone); never the whole raster.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from segflow.errors import ConfigError, OutputError
from segflow.io.export_common import open_exportable
from segflow.io.source import RasterGeometry
from segflow.io.vector import MAX_SHAPES_ID, FeatureWriter, VectorFormat, pixel_shapes
from segflow.io.zarr_sink import ZarrSink
from segflow.options import parse_choice
from segflow.outputs.components import Components, ComponentTable, Connectivity, find_components
from segflow.outputs.postprocess import AREA_UNITS, pixel_size_of, resolve_classes
from segflow.outputs.stitch import Stitcher

BATCH = 10_000  # features per write
STRIP_PIXELS = 1 << 20  # pixels vectorised at a time
BATCH_VERTICES = 100_000  # ... or fewer: a polygon that spans the image goes (nearly) alone


@dataclass(frozen=True)
class PolygonResult:
    path: Path
    features: int
    per_class: dict[str, int]  # polygons written per class
    dropped: int = 0  # polygons below ``min_area``


@dataclass(frozen=True)
class MinArea:
    """A minimum polygon area: CRS units² (unit ""), pixels ("px") or m², ha, km²."""

    value: float
    unit: str = ""

    def keep(self, table: ComponentTable, sink: ZarrSink, geometry: RasterGeometry) -> Any:
        """Per component id (index 0 = none): whether its polygon is at least this large."""
        pixels = np.concatenate(([0], table.sizes)).astype(np.float64)
        if self.unit == "px":
            area = pixels
        elif self.unit == "":
            a, b, _, d, e, _ = geometry.transform
            area = pixels * abs(a * e - b * d)
        else:
            metres = pixel_size_of(sink)
            if metres is None:
                raise ConfigError(
                    f"--min-area in {self.unit} needs a projected CRS; this store has none, "
                    "give CRS units or px"
                )
            area = pixels * metres / AREA_UNITS[self.unit]
        return area >= self.value


def parse_min_area(value: str | float | MinArea | None) -> MinArea | None:
    """``250`` (CRS units²), ``"40px"``, ``"0.5ha"``, ``"5000 m2"`` as a positive :class:`MinArea`."""
    if value is None or isinstance(value, MinArea):
        return value
    number: float | None = None
    unit = ""
    if isinstance(value, int | float):
        number = float(value)
    elif match := re.fullmatch(r"\s*([0-9.eE+]+)\s*([^\s0-9.].*?)?\s*", str(value)):
        unit = (match.group(2) or "").lower()
        try:
            number = float(match.group(1))
        except ValueError:
            number = None
    if number is None or unit not in ("", "px", *AREA_UNITS):
        raise ConfigError(
            "--min-area takes an area in CRS units, px, m2, ha or km2 "
            f"(like 250, 40px, 0.5ha), got '{value}'"
        )
    area = MinArea(number, unit)
    if not (math.isfinite(area.value) and area.value > 0):
        raise ConfigError(f"--min-area must be greater than 0, got {area.value:g}")
    return area


def parse_tolerance(value: float | None) -> float | None:
    """A simplification tolerance in CRS units: None or 0 for none, never negative."""
    if value is None or value == 0:
        return None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--simplify takes a tolerance >= 0 in CRS units, got {value:g}")
    return float(value)


def export_polygons(
    store: str | os.PathLike[str] | ZarrSink,
    output: str | os.PathLike[str],
    *,
    to: str | VectorFormat = VectorFormat.GPKG,
    classes: str | Sequence[str | int] | None = None,
    min_area: str | float | MinArea | None = None,
    simplify: float | None = None,
    overwrite: bool = False,
) -> PolygonResult:
    """Write the polygons of ``classes`` (default: all) to a GeoPackage, GeoParquet or GeoJSON.

    Attributes: ``class_id``, ``class_name``, ``pixels``, ``area`` (CRS units²) and,
    for a projected CRS, ``area_m2``. ``min_area`` and ``simplify``: see the module.
    """
    fmt = parse_choice(VectorFormat, to, "vector format")
    smallest = parse_min_area(min_area)
    tolerance = parse_tolerance(simplify)
    sink, geometry = open_exportable(
        store, RasterGeometry, "is a volume output; polygons need a raster store"
    )
    wanted = resolve_classes(classes, sink.classes) or None
    components = find_components(sink, classes=wanted, connectivity=Connectivity.FACE)
    table = components.table
    keep = np.ones(len(table) + 1, dtype=bool)
    if smallest is not None:
        keep = smallest.keep(table, sink, geometry)
    target = Path(output).expanduser()
    with FeatureWriter(target, fmt, geometry.crs_wkt, overwrite=overwrite) as writer:
        batch = _Batch(sink, geometry, table, tolerance)
        for geometry_px, gid in _component_polygons(components, keep):
            batch.add(geometry_px, gid)
            if len(batch.geometries) >= BATCH or batch.vertices >= BATCH_VERTICES:
                batch.flush(writer)
        batch.flush(writer, last=True)
    names = [c.name for c in sink.classes]
    counts = np.bincount(table.classes[keep[1:]], minlength=len(names))
    per_class = {names[v]: int(counts[v]) for v in components.classes}
    return PolygonResult(target, writer.count, per_class, int((~keep[1:]).sum()))


def _component_polygons(components: Components, keep: Any) -> Iterator[tuple[Any, int]]:
    """(polygon in pixel coordinates, global id) for every kept component, strip by strip."""
    sink = components.sink
    height, width = sink.layout.spatial_shape
    if len(components.table) > MAX_SHAPES_ID:
        raise OutputError(f"too many components to vectorise ({len(components.table)})")
    stitcher = Stitcher(height)
    above: Any = None
    grid_rows, grid_cols = sink.chunk_grid_shape
    try:
        for i in range(grid_rows):
            rows = sink.chunk_region((i, 0))[0]
            band = np.zeros((rows.stop - rows.start, width), dtype=np.int32)
            for j in range(grid_cols):
                _, ids = components.read_chunk((i, j))
                band[:, sink.chunk_region((i, j))[1]] = np.where(keep[ids], ids, 0)
            # vectorised a few rows at a time: GDAL's copies stay small whatever the width
            step = max(1, STRIP_PIXELS // width)
            for top in range(0, band.shape[0], step):
                strip = band[top : top + step]
                start = rows.start + top
                pieces = pixel_shapes(strip, (start, 0))
                lines = slice(start, start + strip.shape[0])
                yield from stitcher.strip(pieces, lines, above, strip[0], strip[-1])
                above = strip[-1].copy()
    finally:
        stitcher.close()
    if stitcher.open:  # every component ends in some strip
        raise AssertionError(f"{len(stitcher.open)} components left open after the last strip")


@dataclass
class _Batch:
    """Features waiting to be written, with their attributes."""

    sink: ZarrSink
    geometry: RasterGeometry
    table: ComponentTable
    tolerance: float | None = None
    geometries: list[Any] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    vertices: int = 0

    def add(self, polygon_px: Any, gid: int) -> None:
        self.geometries.append(polygon_px)
        self.ids.append(gid)
        self.vertices += int(shapely.get_num_coordinates(polygon_px))

    def flush(self, writer: FeatureWriter, *, last: bool = False) -> None:
        if not self.geometries and not (last and writer.count == 0):
            return
        a, b, c, d, e, f = self.geometry.transform
        matrix = np.array([[a, d], [b, e]])
        offset = np.array([c, f])
        moved = list(
            shapely.transform(
                np.asarray(self.geometries, dtype=object), lambda xy: xy @ matrix + offset
            )
        )
        if self.tolerance is not None:
            moved = list(shapely.simplify(moved, self.tolerance, preserve_topology=True))
        rows = np.asarray(self.ids, dtype=np.int64) - 1
        values = self.table.classes[rows]
        pixels = self.table.sizes[rows]
        names = np.array([self.sink.classes[v].name for v in values.tolist()], dtype=str)
        columns: dict[str, Any] = {
            "class_id": values.astype(np.int32),
            "class_name": names,
            "pixels": pixels,
            "area": pixels * abs(a * e - b * d),
        }
        metres = pixel_size_of(self.sink)
        if metres is not None:
            columns["area_m2"] = pixels * metres
        writer.write(moved, columns)
        self.geometries.clear()
        self.ids.clear()
        self.vertices = 0
