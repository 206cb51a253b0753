"""Vector I/O for label polygons: vectorising a block, writing features in batches.

:func:`pixel_shapes` runs ``rasterio.features.shapes`` on one block of component
ids, in pixel coordinates of the whole image (integers, exact), so pieces of one
component cut by block borders share their edges exactly and merge cleanly.

:class:`FeatureWriter` writes batches of polygons with their attributes to a
GeoPackage or GeoJSON (pyogrio, appending layer batches) or a GeoParquet file
(pyarrow, one row group per batch, WKB geometry and the ``geo`` metadata). It
writes to a hidden temporary file beside the target and renames it at the end, so
an interrupted export leaves no half-written target.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio.features
from rasterio.transform import Affine

from segflow.errors import OutputError
from segflow.io.export_common import prepare_target

LAYER = "polygons"
MAX_SHAPES_ID = 2**31 - 1  # rasterio.features.shapes works on int32


class VectorFormat(StrEnum):
    GPKG = "gpkg"
    PARQUET = "parquet"
    GEOJSON = "geojson"


DRIVERS = {VectorFormat.GPKG: "GPKG", VectorFormat.GEOJSON: "GeoJSON"}


def pixel_shapes(
    ids: npt.NDArray[np.integer[Any]], origin: Sequence[int]
) -> Iterator[tuple[dict[str, Any], int]]:
    """(GeoJSON polygon, id) of each 4-connected piece of ``ids > 0`` in one block.

    ``origin`` is the block's (row, col) in the whole image; coordinates are the
    image's pixel coordinates (x = column, y = row), holes included.
    """
    if ids.size and int(ids.max()) > MAX_SHAPES_ID:
        raise OutputError(f"too many components to vectorise ({int(ids.max())} > {MAX_SHAPES_ID})")
    block = np.asarray(ids, dtype=np.int32)
    row, col = (int(v) for v in origin)
    shapes = rasterio.features.shapes(
        block, mask=block > 0, connectivity=4, transform=Affine.translation(col, row)
    )
    for geometry, value in shapes:
        yield geometry, int(value)


class FeatureWriter:
    """Batches of polygons + attribute columns into one layer of a vector file."""

    def __init__(
        self, target: Path, fmt: VectorFormat, crs_wkt: str | None, *, overwrite: bool = False
    ) -> None:
        prepare_target(target, overwrite, f".{fmt.value}")
        self.target = target
        self.format = fmt
        self.crs_wkt = crs_wkt
        self.count = 0
        self._part = target.with_name(f".{target.stem}.part{target.suffix or '.' + fmt.value}")
        self._parquet: Any = None
        self._part.unlink(missing_ok=True)

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, geometries: Sequence[Any], columns: Mapping[str, Sequence[Any]]) -> None:
        """Append one batch (the first batch also creates the layer, even when empty)."""
        if not geometries and self.count:
            return
        try:
            if self.format is VectorFormat.PARQUET:
                self._write_parquet(geometries, columns)
            else:
                self._write_ogr(geometries, columns)
        except OSError as exc:
            raise OutputError(f"cannot write {self.target}: {exc}") from exc
        self.count += len(geometries)

    def close(self) -> None:
        if self.count == 0 and not self._part.exists():
            raise OutputError(f"nothing was written to {self.target}")
        if self._parquet is not None:
            self._parquet.close()
        os.replace(self._part, self.target)

    def abort(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        self._part.unlink(missing_ok=True)

    def _write_ogr(self, geometries: Sequence[Any], columns: Mapping[str, Sequence[Any]]) -> None:
        import geopandas
        import pyogrio

        frame = geopandas.GeoDataFrame(dict(columns), geometry=list(geometries), crs=self.crs_wkt)
        with warnings.catch_warnings():  # a store without a CRS gives a layer without one
            warnings.filterwarnings(
                "ignore", message="'crs' was not provided", category=UserWarning
            )
            pyogrio.write_dataframe(
                frame,
                self._part,
                layer=LAYER,
                driver=DRIVERS[self.format],
                geometry_type="Polygon",
                append=self._part.exists(),
            )

    def _write_parquet(
        self, geometries: Sequence[Any], columns: Mapping[str, Sequence[Any]]
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import shapely

        data = {name: _arrow_column(values) for name, values in columns.items()}
        data["geometry"] = pa.array(
            list(shapely.to_wkb(np.asarray(geometries, dtype=object))), pa.binary()
        )
        table = pa.table(data)
        if self._parquet is None:
            schema = table.schema.with_metadata({b"geo": json.dumps(self._geo_metadata()).encode()})
            self._parquet = pq.ParquetWriter(self._part, schema)
        self._parquet.write_table(table.cast(self._parquet.schema))

    def _geo_metadata(self) -> dict[str, Any]:
        """GeoParquet 1.1 file metadata; ``crs`` as PROJJSON (null when the store has none)."""
        crs: Any = None
        if self.crs_wkt is not None:
            import pyproj

            crs = pyproj.CRS.from_wkt(self.crs_wkt).to_json_dict()
        column = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs}
        return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def _arrow_column(values: Sequence[Any]) -> Any:
    """A typed Arrow column, strings included (an empty batch keeps its column types)."""
    import pyarrow as pa

    array = np.asarray(values)
    return pa.array(array.tolist(), pa.string()) if array.dtype.kind in "OUS" else pa.array(array)
