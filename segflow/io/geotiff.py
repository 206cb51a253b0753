"""GeoTIFF (and any GDAL raster) as a lazy channel-first Source.

The file is validated once, at construction, so a broken input fails before
any work is scheduled: missing, empty, not a raster, truncated, or asking for
bands it does not have. Reads are windowed; each thread (and process) has its
own GDAL handle because GDAL handles must not be shared between threads.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.enums import Interleaving, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from segflow.errors import ReaderError
from segflow.heap import mapped_empty
from segflow.io.files import check_input_file
from segflow.io.lazy import (
    FileSourceBase,
    ThreadHandles,
    check_user_nodata,
    file_token,
    normalize_region,
    one_line,
    region_shape,
    valid_mask,
)
from segflow.io.source import RasterGeometry, ReadResult, Region
from segflow.io.uris import ObjectPath, as_location, gdal_options, redact

__all__ = ["GeoTiffSource", "GeoreferencingWarning", "NotARasterError"]


class GeoreferencingWarning(UserWarning):
    """The raster has no CRS and no geotransform: it is read in pixel coordinates."""


class NotARasterError(ReaderError):
    """GDAL does not recognise the file as any raster format."""


# catch_warnings() swaps the process-wide filter list; serialise our own uses of it
_OPEN_LOCK = threading.Lock()


def _open_dataset(path: Path | ObjectPath, quiet: bool = True) -> DatasetReader:
    """A private (unshared) GDAL handle; ``quiet`` hides NotGeoreferencedWarning.

    rasterio warns on every open of a plain TIFF (so once per thread here); the
    source warns once itself, with a message that says what happens. An object in
    storage opens through GDAL's /vsis3 (/vsigs, /vsiaz, /vsicurl) with the settings
    :func:`~segflow.io.uris.gdal_options` derives from the environment.
    """
    with gdal_env(path):
        if not quiet:
            return rasterio.open(_gdal_name(path), sharing=False)
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(_gdal_name(path), sharing=False)


def _gdal_name(path: Path | ObjectPath) -> str | Path:
    # rasterio turns s3://, gs://, az:// and https:// into GDAL's /vsi... names
    return str(path) if isinstance(path, ObjectPath) else path


def gdal_env(path: Path | ObjectPath) -> contextlib.AbstractContextManager[object]:
    """GDAL settings for reading ``path``: none for a local file."""
    if not isinstance(path, ObjectPath):
        return contextlib.nullcontext()
    env: contextlib.AbstractContextManager[object] = rasterio.Env(**gdal_options())
    return env


def _close_dataset(ds: DatasetReader) -> None:
    ds.close()


def _parse_bands(
    bands: Sequence[int] | None, count: int, path: Path | ObjectPath
) -> tuple[int, ...]:
    if count < 1:
        raise ReaderError(f"{path}: has no raster bands")
    if bands is None:
        return tuple(range(1, count + 1))
    if isinstance(bands, int | str) or len(bands) == 0:
        raise ReaderError(f"{path}: bands={bands!r} must be a non-empty list of 1-based indexes")
    out = tuple(int(b) for b in bands)
    bad = [b for b in out if not 1 <= b <= count]
    if bad:
        raise ReaderError(
            f"{path}: band {bad[0]} does not exist; the file has {count} band(s), "
            f"numbered 1..{count}"
        )
    return out


def _largest_block_end(ds: DatasetReader) -> int:
    """Largest offset + byte count over the image's blocks, from the TIFF tags.

    GDAL exposes TileOffsets/StripOffsets as BLOCK_OFFSET_x_y items (absent for
    sparse blocks); 0 when it exposes none.
    """
    bh, bw = ds.block_shapes[0]
    ny, nx = -(-ds.height // bh), -(-ds.width // bw)
    # pixel-interleaved blocks hold all bands; band-interleaved ones are per band
    planes = range(1, ds.count + 1) if ds.interleaving == Interleaving.band else [1]
    end = 0
    for b in planes:
        for y in range(ny):
            for x in range(nx):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b)
                size = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=b)
                if offset is not None and size is not None:  # None: sparse block, or no tags
                    end = max(end, int(offset) + int(size))
    return end


def _uses_mask(flags: Sequence[MaskFlags]) -> bool:
    # an internal mask or alpha band says where data is; nodata masks we compute ourselves
    return MaskFlags.per_dataset in flags and MaskFlags.nodata not in flags


class GeoTiffSource(FileSourceBase[DatasetReader]):
    """A GeoTIFF read lazily as ``(C, y, x)``.

    ``bands`` selects 1-based bands in the given order (default: all).
    ``nodata`` overrides the file's nodata value; NaN is nodata for float data
    in any case. A pixel is invalid where every selected band is nodata, or
    where the file's internal mask / alpha band says so.
    """

    kind: Literal["raster", "volume"] = "raster"  # the Protocol's type, so instances conform

    def __init__(
        self,
        path: str | Path | ObjectPath,
        *,
        bands: Sequence[int] | None = None,
        nodata: float | None = None,
    ) -> None:
        self.path = as_location(path)
        self._file_size = check_input_file(self.path)
        try:
            ds = _open_dataset(self.path)
        except RasterioError as e:
            message = redact(one_line(e))
            if "not recognized as" in message or "not recognised as" in message:
                raise NotARasterError(
                    f"{self.path}: not a raster GDAL can read; segflow reads GeoTIFF "
                    "(.tif/.tiff) and NIfTI (.nii/.nii.gz)"
                ) from None
            raise ReaderError(
                f"{self.path}: cannot be opened as a raster ({message}); the file may be "
                "truncated or damaged"
            ) from None
        with ds:
            self._bands = _parse_bands(bands, ds.count, self.path)
            dtypes = {ds.dtypes[b - 1] for b in self._bands}
            if len(dtypes) > 1:
                raise ReaderError(
                    f"{self.path}: the selected bands mix data types {sorted(dtypes)}; "
                    "select bands of one type with bands=[...]"
                )
            self._dtype: np.dtype[Any] = np.dtype(dtypes.pop())
            if self._dtype.kind not in "biuf":
                raise ReaderError(f"{self.path}: {self._dtype} data cannot be segmented")
            self._shape = (int(ds.height), int(ds.width))
            bh, bw = ds.block_shapes[self._bands[0] - 1]
            self._block = (int(bh), int(bw))
            self._file_nodata: tuple[float | None, ...] = tuple(
                None if v is None else float(v) for v in (ds.nodatavals[b - 1] for b in self._bands)
            )
            self._band_names = tuple(ds.descriptions[b - 1] or f"band_{b}" for b in self._bands)
            self._use_mask = _uses_mask(ds.mask_flag_enums[self._bands[0] - 1])
            self._geometry, plain_warning = self._read_geometry(ds)
            self._check_complete(ds)
        self._user_nodata = check_user_nodata(nodata, self._dtype, self.path)
        self._checksum: str | None = None
        self._handles = self._new_handles()
        if plain_warning:  # only once the file is known to be readable
            warnings.warn(plain_warning, GeoreferencingWarning, stacklevel=2)

    # -- construction helpers ------------------------------------------------

    def _new_handles(self) -> ThreadHandles[DatasetReader]:
        # only plain TIFFs make rasterio warn: skip the process-wide filter swap otherwise
        quiet = not self._geometry.georeferenced
        return ThreadHandles(functools.partial(_open_dataset, self.path, quiet), _close_dataset)

    def _read_geometry(self, ds: DatasetReader) -> tuple[RasterGeometry, str | None]:
        """The geometry, and the warning to give when the file has none."""
        transform = ds.transform
        crs_wkt = ds.crs.to_wkt() if ds.crs else None
        georeferenced = crs_wkt is not None or not transform.is_identity
        warning = None
        if not georeferenced:
            extra = ""
            if ds.gcps[0] or ds.rpcs:
                extra = (
                    "; its GCPs/RPCs are not used: warp it to a grid first "
                    "(e.g. gdalwarp) to keep georeferencing"
                )
            warning = (
                f"{self.path} has no georeferencing (no CRS, no geotransform): it is read "
                f"in pixel coordinates and outputs will have no CRS{extra}"
            )
        a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
        geometry = RasterGeometry(
            crs_wkt=crs_wkt, transform=(a, b, c, d, e, f), georeferenced=georeferenced
        )
        return geometry, warning

    def _check_complete(self, ds: DatasetReader) -> None:
        """Catch truncated files now: GDAL opens them and fails only on reading."""
        if ds.driver == "GTiff":
            end = _largest_block_end(ds)
            if end > self._file_size:
                raise ReaderError(
                    f"{self.path}: truncated TIFF: its image data needs {end} bytes but the "
                    f"file has {self._file_size}; copy or download it again"
                )
        # decoding the last block also catches damage the offsets cannot show
        bh, bw = self._block
        h, w = self._shape
        row, col = (h - 1) // bh * bh, (w - 1) // bw * bw
        window = Window(col, row, w - col, h - row)
        try:
            with gdal_env(self.path):
                ds.read(indexes=list(self._bands), window=window)
                if self._use_mask:
                    ds.read_masks(self._bands[0], window=window)
        except RasterioError as e:
            raise ReaderError(
                f"{self.path}: reading its last block failed ({redact(one_line(e))}); the file is "
                "truncated or damaged, copy or export it again"
            ) from None

    # -- Source protocol -------------------------------------------------------

    @property
    def spatial_shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def channels(self) -> int:
        return len(self._bands)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def bands(self) -> tuple[int, ...]:
        """The selected 1-based band indexes, in channel order."""
        return self._bands

    @property
    def band_names(self) -> tuple[str, ...]:
        return self._band_names

    @property
    def nodata(self) -> float | None:
        if self._user_nodata is not None:
            return self._user_nodata
        return self._file_nodata[0]

    @property
    def block_shape(self) -> tuple[int, int]:
        return self._block

    @property
    def geometry(self) -> RasterGeometry:
        return self._geometry

    def read(self, region: Region) -> ReadResult:
        rows, cols = normalize_region(region, self._shape)
        h, w = region_shape((rows, cols))
        if h == 0 or w == 0:
            return ReadResult(np.empty((self.channels, h, w), self._dtype), np.ones((h, w), bool))
        ds = self._handles.get()
        window = Window.from_slices(rows, cols)
        try:
            with gdal_env(self.path):
                data = ds.read(
                    indexes=list(self._bands),
                    window=window,
                    out=mapped_empty((self.channels, h, w), self._dtype),
                )
                mask = ds.read_masks(self._bands[0], window=window) if self._use_mask else None
        except RasterioError as e:
            raise ReaderError(
                f"{self.path}: reading rows {rows.start}:{rows.stop}, columns "
                f"{cols.start}:{cols.stop} failed ({redact(one_line(e))}); the file may be damaged"
            ) from None
        valid = valid_mask(data, self._band_nodata())
        if mask is not None:
            valid = valid & (mask != 0)  # valid may be a read-only all-valid view
        return ReadResult(data, valid)

    def _band_nodata(self) -> tuple[float | None, ...]:
        if self._user_nodata is not None:
            return (self._user_nodata,) * self.channels
        return self._file_nodata

    # -- identity ------------------------------------------------------------

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("GeoTiffSource", *file_token(self.path), self._bands, self._user_nodata)

    def __repr__(self) -> str:
        return f"GeoTiffSource({str(self.path)!r}, bands={list(self._bands)}, nodata={self.nodata})"
