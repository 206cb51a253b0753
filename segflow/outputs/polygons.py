"""Polygons of a raster label store: one per 4-connected component of each class.

The components come from :mod:`segflow.outputs.components` (face connectivity, the
connectivity of ``rasterio.features.shapes``), so a component cut by chunk borders
keeps one id. Each chunk is vectorised on its own in the image's pixel coordinates;
a component that lies in one chunk is written at once, the pieces of one that
crosses chunks wait until its last chunk is done and are merged with
``shapely.union_all`` (exact: pixel corners are integers). Geometries are then
moved to the store's CRS with its affine transform. Holes are kept.

Memory: one chunk, the pending pieces of components still open, one batch of
features; never the whole raster.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.affinity

from segflow.io.export_common import open_exportable
from segflow.io.source import RasterGeometry
from segflow.io.vector import FeatureWriter, VectorFormat, pixel_polygons
from segflow.io.zarr_sink import ZarrSink
from segflow.options import parse_choice
from segflow.outputs.components import Components, ComponentTable, Connectivity, find_components
from segflow.outputs.postprocess import pixel_size_of, resolve_classes

BATCH = 10_000  # features per write


@dataclass(frozen=True)
class PolygonResult:
    path: Path
    features: int
    per_class: dict[str, int]


def export_polygons(
    store: str | os.PathLike[str] | ZarrSink,
    output: str | os.PathLike[str],
    *,
    to: str | VectorFormat = VectorFormat.GPKG,
    classes: str | Sequence[str | int] | None = None,
    overwrite: bool = False,
) -> PolygonResult:
    """Write the polygons of ``classes`` (default: all) to a GeoPackage, GeoParquet or GeoJSON.

    Attributes: ``class_id``, ``class_name``, ``pixels``, ``area`` (CRS units²) and,
    for a projected CRS, ``area_m2``.
    """
    fmt = parse_choice(VectorFormat, to, "vector format")
    sink, geometry = open_exportable(
        store, RasterGeometry, "is a volume output; polygons need a raster store"
    )
    wanted = resolve_classes(classes, sink.classes) or None
    components = find_components(sink, classes=wanted, connectivity=Connectivity.FACE)
    target = Path(output).expanduser()
    with FeatureWriter(target, fmt, geometry.crs_wkt, overwrite=overwrite) as writer:
        batch = _Batch(sink, geometry, components.table)
        for geometry_px, gid in _component_polygons(components):
            batch.add(geometry_px, gid)
            if len(batch.geometries) >= BATCH:
                batch.flush(writer)
        batch.flush(writer, last=True)
    names = [c.name for c in sink.classes]
    counts = np.bincount(components.table.classes, minlength=len(names))
    per_class = {names[v]: int(counts[v]) for v in components.classes}
    return PolygonResult(target, writer.count, per_class)


def _component_polygons(components: Components) -> Any:
    """(polygon in pixel coordinates, global id) for every component, chunk by chunk."""
    last = components.table.last_chunk
    pending: dict[int, list[Any]] = defaultdict(list)
    for ordinal, index in enumerate(components.chunk_indices()):
        _, ids = components.read_chunk(index)
        origin = [r.start for r in components.sink.chunk_region(index)]
        touched = set()
        for polygon, gid in pixel_polygons(ids, origin):
            if last[gid - 1] == ordinal and gid not in pending:
                yield polygon, gid  # all of it is in this chunk and in one piece
            else:
                pending[gid].append(polygon)
                touched.add(gid)
        for gid in sorted(touched):
            if last[gid - 1] == ordinal:
                yield _merged(pending.pop(gid)), gid


def _merged(pieces: list[Any]) -> Any:
    # simplify(0) drops the vertices left where chunk borders cut straight edges
    merged = shapely.simplify(shapely.union_all(pieces), 0.0, preserve_topology=True)
    if merged.geom_type != "Polygon":  # a 4-connected set of squares is one polygon
        raise AssertionError(f"pieces of one component merged into a {merged.geom_type}")
    return merged


@dataclass
class _Batch:
    """Features waiting to be written, with their attributes."""

    sink: ZarrSink
    geometry: RasterGeometry
    table: ComponentTable
    geometries: list[Any] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def add(self, polygon_px: Any, gid: int) -> None:
        self.geometries.append(polygon_px)
        self.ids.append(gid)

    def flush(self, writer: FeatureWriter, *, last: bool = False) -> None:
        if not self.geometries and not (last and writer.count == 0):
            return
        a, b, c, d, e, f = self.geometry.transform
        moved = [shapely.affinity.affine_transform(g, [a, b, d, e, c, f]) for g in self.geometries]
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
