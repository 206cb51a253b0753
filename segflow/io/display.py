"""Decimated reads of a raster for display: a few bands at a small size, never the whole image.

GDAL decimates (``out_shape``, nearest), so a quicklook of a huge scene reads about
as many pixels as it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import ColorInterp
from rasterio.enums import Resampling as GdalResampling
from rasterio.errors import RasterioError

from segflow.errors import ConfigError, ReaderError
from segflow.io.source import RasterGeometry


def read_display_bands(
    path: Path,
    out_shape: tuple[int, int],
    bands: Sequence[int] | None,
    *,
    expect_shape: tuple[int, ...],
    expect_geometry: RasterGeometry,
    store_name: str,
) -> npt.NDArray[np.float64]:
    """One or three display bands of ``path`` at ``out_shape``, NaN where nodata.

    The file must be the one a store (``store_name``) was made from: same size, and
    when georeferenced the same transform; otherwise a one-line ConfigError.
    """
    try:
        ds = rasterio.open(path)
    except RasterioError as exc:
        raise ReaderError(f"{path}: cannot be opened as a raster ({exc})") from exc
    with ds:
        if (ds.height, ds.width) != tuple(expect_shape):
            raise ConfigError(
                f"{path} is {ds.width} x {ds.height} px but {store_name} is "
                f"{expect_shape[1]} x {expect_shape[0]}; pass the image the store was made from"
            )
        if expect_geometry.georeferenced and not np.allclose(
            tuple(ds.transform)[:6], expect_geometry.transform, rtol=1e-9, atol=1e-9
        ):
            raise ConfigError(
                f"{path} has a different geotransform than {store_name}; pass the image the "
                "store was made from"
            )
        indexes = choose_bands(ds, bands)
        data = ds.read(
            indexes=indexes,
            out_shape=(len(indexes), *out_shape),
            resampling=GdalResampling.nearest,
            masked=True,
        )
    return np.asarray(np.ma.filled(data.astype(np.float64), np.nan), dtype=np.float64)


def choose_bands(ds: Any, bands: Sequence[int] | None) -> list[int]:
    """Display bands of an open dataset: the given ones, else red/green/blue by colour
    interpretation or band description, else the first three (one band shows as grey)."""
    if bands is not None:
        chosen = [int(b) for b in bands]
        bad = [b for b in chosen if not 1 <= b <= ds.count]
        if bad or len(chosen) not in (1, 3):
            raise ConfigError(
                f"display bands {chosen} must be 1 or 3 band numbers in 1..{ds.count}"
            )
        return chosen
    if ds.count < 3:
        return [1]
    interp = list(ds.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        return [interp.index(c) + 1 for c in wanted]
    return _bands_by_name([(d or "").lower() for d in ds.descriptions]) or [1, 2, 3]


def _bands_by_name(names: Sequence[str]) -> list[int] | None:
    found = []
    for colour in ("red", "green", "blue"):
        match = [i + 1 for i, name in enumerate(names) if colour in name]
        if len(match) != 1:
            return None
        found.append(match[0])
    return found
