"""Writing tiled GeoTIFFs window by window (sample scenes, truth masks).

:class:`GeoTiffWriter` opens one file for writing; :meth:`~GeoTiffWriter.write`
puts a block at a pixel offset, so memory does not grow with the raster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import numpy.typing as npt
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine
from rasterio.windows import Window

from segflow.errors import ConfigError

Transform = tuple[float, float, float, float, float, float]


def check_crs(crs: str) -> CRS:
    """A CRS from user input (``"EPSG:32633"``, WKT, PROJ), or a one-line ConfigError."""
    try:
        return CRS.from_user_input(crs)
    except CRSError as exc:
        raise ConfigError(
            f"crs {crs!r} is not a valid CRS ({exc}); use e.g. 'EPSG:32633'"
        ) from None


class GeoTiffWriter:
    """A tiled GeoTIFF open for writing; use as a context manager.

    Write failures are rasterio's OSErrors; the caller names what it was writing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        shape: tuple[int, int],
        count: int,
        dtype: str,
        crs: str,
        transform: Transform,
        nodata: float | None,
        tile: int,
        **creation: Any,
    ) -> None:
        height, width = shape
        self.path = path
        self._ds = rasterio.open(
            path,
            "w",
            driver="GTiff",
            height=height,
            width=width,
            count=count,
            dtype=dtype,
            nodata=nodata,
            crs=check_crs(crs),
            transform=Affine(*transform),
            tiled=True,
            blockxsize=tile,
            blockysize=tile,
            **creation,
        )

    def write(self, block: npt.NDArray[Any], row: int, col: int) -> None:
        """``block`` (bands, h, w), or (h, w) for band 1, with its top-left pixel at (row, col)."""
        h, w = block.shape[-2:]
        window = Window(col, row, w, h)
        if block.ndim == 2:
            self._ds.write(block, 1, window=window)
        else:
            self._ds.write(block, window=window)

    def describe_bands(self, names: Sequence[str]) -> None:
        for i, name in enumerate(names, start=1):
            self._ds.set_band_description(i, name)

    def tag(self, tags: Mapping[str, str], band: int | None = None) -> None:
        """Dataset tags, or band tags with ``band``."""
        if band is None:
            self._ds.update_tags(**tags)
        else:
            self._ds.update_tags(band, **tags)

    def colormap(self, colors: Mapping[int, tuple[int, int, int, int]], band: int = 1) -> None:
        self._ds.write_colormap(band, dict(colors))

    def close(self) -> None:
        self._ds.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
