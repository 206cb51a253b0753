"""Bands from separate files, stacked in a chosen order on one grid, as one lazy Source.

A STAC item keeps one asset per band, often at several resolutions (Sentinel-2: 10 m
and 20 m). :class:`BandStack` reads each band from its own file (local or in object
storage) and brings bands on other grids onto the finest one with a GDAL warped VRT
(nearest neighbour, as ``gdalbuildvrt`` does), region by region, so nothing is read
whole. Bands must share a CRS.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from segflow.errors import ReaderError
from segflow.heap import mapped_empty
from segflow.io.geotiff import _open_dataset, gdal_env
from segflow.io.lazy import (
    ThreadHandles,
    file_token,
    normalize_region,
    one_line,
    region_shape,
    valid_mask,
)
from segflow.io.source import RasterGeometry, ReadResult, Region
from segflow.io.uris import ObjectPath, as_location, redact

__all__ = ["BandFile", "BandStack"]

Transform = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class BandFile:
    """One band of the stack: a file (or object), its 1-based band index, the band's name."""

    href: str
    band: int
    name: str


@dataclass(frozen=True)
class _Grid:
    crs_wkt: str | None
    transform: Transform
    shape: tuple[int, int]
    block: tuple[int, int]
    dtype: str
    nodata: float | None


def _describe(band: BandFile) -> _Grid:
    try:
        with _open_dataset(as_location(band.href)) as ds:
            if not 1 <= band.band <= ds.count:
                raise ReaderError(f"{band.href}: has no band {band.band} (it has {ds.count})")
            a, b, c, d, e, f = (float(v) for v in tuple(ds.transform)[:6])
            nodata = ds.nodatavals[band.band - 1]
            return _Grid(
                ds.crs.to_wkt() if ds.crs else None,
                (a, b, c, d, e, f),
                (int(ds.height), int(ds.width)),
                tuple(int(v) for v in ds.block_shapes[band.band - 1]),  # type: ignore[arg-type]
                str(ds.dtypes[band.band - 1]),
                None if nodata is None else float(nodata),
            )
    except RasterioError as exc:
        raise ReaderError(f"{band.href}: cannot be opened ({redact(one_line(exc))})") from None


def _finest(grids: Sequence[_Grid]) -> _Grid:
    return min(grids, key=lambda g: abs(g.transform[0] * g.transform[4]))


class _Opened:
    """One thread's handle on one band: the file, or a warped view of it on the stack's grid."""

    def __init__(self, href: str, target: _Grid | None) -> None:
        self.dataset: DatasetReader = _open_dataset(as_location(href))
        self.view: Any = self.dataset
        if target is not None:
            from rasterio.transform import Affine

            self.view = WarpedVRT(
                self.dataset,
                crs=self.dataset.crs,
                transform=Affine(*target.transform),
                width=target.shape[1],
                height=target.shape[0],
                resampling=Resampling.nearest,
            )

    def close(self) -> None:
        if self.view is not self.dataset:
            self.view.close()
        self.dataset.close()


class BandStack:
    """``(C, y, x)`` from one file per band (or a few bands per file), in ``bands`` order."""

    kind: Literal["raster", "volume"] = "raster"

    def __init__(
        self, path: str | Path | ObjectPath, bands: Sequence[BandFile], nodata: float | None = None
    ) -> None:
        if not bands:
            raise ReaderError(f"{path}: no bands to read")
        self.path = as_location(path)  # the STAC item (or what listed the bands)
        self._bands = tuple(bands)
        grids = [_describe(b) for b in self._bands]
        crs = {g.crs_wkt for g in grids}
        if len(crs) > 1:
            raise ReaderError(
                f"{path}: its bands are in different CRSs; warp them to one CRS first"
            )
        dtypes = {g.dtype for g in grids}
        if len(dtypes) > 1:
            raise ReaderError(f"{path}: its bands mix data types {sorted(dtypes)}")
        self._grid = _finest(grids)
        # a band already on the stack's grid is read directly, the others through a warp
        self._warped = tuple(
            g.transform != self._grid.transform or g.shape != self._grid.shape for g in grids
        )
        self._file_nodata = tuple(g.nodata for g in grids)
        self._user_nodata = nodata
        self._handles = self._new_handles()

    def _new_handles(self) -> list[ThreadHandles[_Opened]]:
        return [
            ThreadHandles(
                functools.partial(_Opened, band.href, self._grid if warped else None), _Opened.close
            )
            for band, warped in zip(self._bands, self._warped, strict=True)
        ]

    @property
    def spatial_shape(self) -> tuple[int, int]:
        return self._grid.shape

    @property
    def channels(self) -> int:
        return len(self._bands)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._grid.dtype)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self._bands)

    @property
    def nodata(self) -> float | None:
        return self._user_nodata if self._user_nodata is not None else self._file_nodata[0]

    @property
    def block_shape(self) -> tuple[int, int]:
        return self._grid.block

    @property
    def geometry(self) -> RasterGeometry:
        return RasterGeometry(
            self._grid.crs_wkt, self._grid.transform, self._grid.crs_wkt is not None
        )

    @property
    def resampled_bands(self) -> tuple[str, ...]:
        """Names of the bands brought onto the stack's grid from another resolution."""
        return tuple(b.name for b, w in zip(self._bands, self._warped, strict=True) if w)

    def read(self, region: Region) -> ReadResult:
        rows, cols = normalize_region(region, self._grid.shape)
        h, w = region_shape((rows, cols))
        data = mapped_empty((self.channels, h, w), self.dtype)
        if h == 0 or w == 0:
            return ReadResult(data, np.ones((h, w), bool))
        window = Window.from_slices(rows, cols)
        for index, (band, handles) in enumerate(zip(self._bands, self._handles, strict=True)):
            opened = handles.get()
            try:
                with gdal_env(as_location(band.href)):
                    data[index] = opened.view.read(band.band, window=window)
            except RasterioError as exc:
                raise ReaderError(
                    f"{band.href}: reading rows {rows.start}:{rows.stop}, columns "
                    f"{cols.start}:{cols.stop} failed ({redact(one_line(exc))})"
                ) from None
        nodata = (
            (self._user_nodata,) * self.channels
            if self._user_nodata is not None
            else self._file_nodata
        )
        return ReadResult(data, valid_mask(data, nodata))

    def checksum(self) -> str:
        """sha256 over the band files' identities (URI or path, size, ETag or mtime)."""
        import hashlib

        digest = hashlib.sha256()
        for band in self._bands:
            digest.update(repr((file_token(as_location(band.href)), band.band)).encode())
        return digest.hexdigest()

    def close(self) -> None:
        for handles in self._handles:
            handles.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_handles"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._handles = self._new_handles()

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("BandStack", str(self.path), self.checksum(), self._user_nodata)

    def __repr__(self) -> str:
        return f"BandStack({str(self.path)!r}, bands={list(self.band_names)})"
