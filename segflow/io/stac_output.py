"""A STAC Item for each store made from a STAC item, so results are discoverable.

Written beside the store as ``NAME.item.json`` (a local file, or an object next to a
store in object storage). It carries the store's footprint and datetime, the
projection extension (code or WKT2, shape, transform), the raster extension on the
labels asset (data type, nodata), and links to the source item (``derived_from``) and
to the model file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pystac
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from segflow.io.source import RasterGeometry
from segflow.io.stac import FsspecStacIO, read_item
from segflow.io.stac_names import split_fragment
from segflow.io.stac_parquet import is_parquet
from segflow.io.stores import StorePath
from segflow.io.uris import ObjectPath
from segflow.io.zarr_sink import ZarrSink

__all__ = ["item_path", "output_item", "write_output_item"]

ZARR_MEDIA_TYPE = "application/vnd+zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"  # a source item in stac-geoparquet


def item_path(store: StorePath) -> StorePath:
    """``OUT/NAME.zarr`` -> ``OUT/NAME.item.json``."""
    name = store.name.removesuffix(".zarr")
    return store.with_name(f"{name}.item.json")


def _footprint(
    geometry: RasterGeometry, shape: tuple[int, ...]
) -> tuple[list[float], dict[str, Any]]:
    a, b, c, d, e, f = geometry.transform
    height, width = shape
    xs = [c, c + a * width + b * 0, c + a * width + b * height, c + b * height]
    ys = [f, f + d * width, f + d * width + e * height, f + e * height]
    west, south, east, north = min(xs), min(ys), max(xs), max(ys)
    if geometry.crs_wkt is not None:
        west, south, east, north = transform_bounds(
            CRS.from_wkt(geometry.crs_wkt), "EPSG:4326", west, south, east, north, densify_pts=21
        )
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return [west, south, east, north], {"type": "Polygon", "coordinates": [ring]}


def _projection(item: pystac.Item, geometry: RasterGeometry, shape: tuple[int, ...]) -> None:
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    crs = CRS.from_wkt(geometry.crs_wkt) if geometry.crs_wkt else None
    epsg = crs.to_epsg() if crs is not None else None
    if epsg is not None:
        proj.epsg = epsg
    elif crs is not None:
        proj.wkt2 = crs.to_wkt()
    else:
        proj.epsg = None
    proj.shape = [int(shape[0]), int(shape[1])]
    proj.transform = list(geometry.transform)


def output_item(sink: ZarrSink, source_text: str, model: Mapping[str, Any]) -> pystac.Item:
    """The STAC Item describing ``sink``, made from the input item ``source_text``."""
    if not isinstance(sink.geometry, RasterGeometry):
        raise ValueError("STAC items describe raster stores")
    source = read_item(source_text)
    shape = sink.layout.spatial_shape
    bbox, footprint = _footprint(sink.geometry, shape)
    item = pystac.Item(
        id=f"{source.id}-segflow",
        geometry=footprint,
        bbox=bbox,
        datetime=source.datetime,
        properties={
            "segflow:model_sha256": str(model.get("sha256") or ""),
            "segflow:classes": [c.name for c in sink.classes],
            **(
                {
                    k: source.properties[k]
                    for k in ("start_datetime", "end_datetime")
                    if k in source.properties
                }
            ),
        },
    )
    _projection(item, sink.geometry, shape)
    asset = pystac.Asset(
        href=str(sink.path), media_type=ZARR_MEDIA_TYPE, roles=["data"], title="labels"
    )
    item.add_asset("labels", asset)
    band = RasterBand.create(nodata=sink.label_nodata, data_type=DataType(str(sink.label_dtype)))
    RasterExtension.ext(asset, add_if_missing=True).apply([band])
    source_href, _ = split_fragment(source_text)
    media = PARQUET_MEDIA_TYPE if is_parquet(source_href) else pystac.MediaType.JSON
    item.add_link(pystac.Link("derived_from", source_href, media, f"STAC item {source.id}"))
    if model.get("path"):
        item.add_link(pystac.Link("related", str(model["path"]), title="segflow model"))
    return item


def write_output_item(sink: ZarrSink, source_text: str, model: Mapping[str, Any]) -> StorePath:
    """Write the store's STAC Item beside it; returns where."""
    item = output_item(sink, source_text, model)
    target = item_path(sink.path)
    href = target.uri if isinstance(target, ObjectPath) else str(target)
    item.set_self_href(href)
    FsspecStacIO().write_text(href, _dumps(item.to_dict(include_self_link=True)))
    return target


def _dumps(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2)
