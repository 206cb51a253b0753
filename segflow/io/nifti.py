"""NIfTI-1/2 volumes (.nii, .nii.gz) as a lazy channel-first Source.

Reads go through nibabel's array proxy (``img.dataobj[...]``), which reads
only the bytes of the asked region and applies scl_slope/scl_inter; the
whole volume is never loaded. Spatial axes are the file's voxel axes
(i, j, k) and nothing is reoriented: the geometry carries the affine, and
``segflow.io.orientation`` turns patches to a model's orientation and back.
"""

from __future__ import annotations

import functools
import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError, ReaderError
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
from segflow.io.nib import (
    HeaderDataError,
    ImageFileError,
    NiftiImage,
    aff2axcodes,
    data_dtype,
    load,
    load_stream,
    voxel_sizes,
)
from segflow.io.source import ReadResult, Region, VolumeGeometry
from segflow.io.uris import ObjectPath, as_location

__all__ = ["NiftiSource"]

# what nibabel raises on unreadable, truncated or foreign files
_LOAD_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)
SLAB_BYTES = 8 * 2**20  # one read of k-slices


def _load(path: Path | ObjectPath) -> NiftiImage:
    # keep_file_open: a .gz stream read front to back is not re-inflated from the start
    # for every region; mmap=False: regions are copies, never views of a mapped file
    if isinstance(path, ObjectPath):
        img: object = load_stream(_open_binary(path), gz=path.name.lower().endswith(".gz"))
    else:
        img = load(path, mmap=False, keep_file_open=True)
    if not isinstance(img, NiftiImage):
        raise ReaderError(
            f"{path}: is a {type(img).__name__}, not a single-file NIfTI; convert it to .nii.gz"
        )
    return img


def _drop_image(img: NiftiImage) -> None:
    """Closer for ThreadHandles: the proxy closes its file when the image is freed."""


def _load_error(path: Path | ObjectPath, error: BaseException) -> str:
    message = one_line(error)
    if "not a gzip file" in message:
        return f"{path}: ends in .gz but is not gzip-compressed; rename it to .nii if it is NIfTI"
    if "Cannot work out file type" in message:
        return (
            f"{path}: not a NIfTI file (no valid NIfTI-1/2 header, or the header is cut off); "
            "segflow reads .nii/.nii.gz volumes"
        )
    return f"{path}: cannot be read as NIfTI ({message}); the file may be truncated or damaged"


def _open_binary(path: Path | ObjectPath) -> Any:
    """A file object: the local file, or an fsspec file reading the object by ranges."""
    if isinstance(path, ObjectPath):
        from segflow.io.remote import open_object

        return open_object(path)
    return path.open("rb")


def _gzip_size_matches(path: Path | ObjectPath, expected: int) -> bool:
    """Cheap check: a gzip stream ends with its uncompressed size mod 2**32."""
    with _open_binary(path) as f:
        f.seek(-4, 2)
        (isize,) = struct.unpack("<I", f.read(4))
    return bool(isize == expected % (1 << 32))


def _gzip_length(path: Path | ObjectPath) -> int:
    """Uncompressed length, inflating in blocks (multi-member files, odd trailers)."""
    total = 0
    with _open_binary(path) as raw, gzip.open(raw, "rb") as f:
        while block := f.read(1 << 22):
            total += len(block)
    return total


def _select_volumes(
    shape: tuple[int, ...], volume: int | None, as_channels: bool, path: Path | ObjectPath
) -> tuple[int | None, int]:
    """The volume index to read (None: all, as channels) and the channel count."""
    if volume is not None and as_channels:
        raise ConfigError("give either volume=... or volumes_as_channels=True, not both")
    extra = shape[4:]
    if any(n != 1 for n in extra):
        raise ReaderError(
            f"{path}: has {len(shape)} dimensions {shape}; segflow reads 3-D volumes and "
            "4-D series (vector or tensor images are not supported)"
        )
    volumes = shape[3] if len(shape) >= 4 else 1
    if as_channels:
        return (None if len(shape) >= 4 else 0), volumes
    if volume is None:
        if volumes > 1:
            raise ReaderError(
                f"{path}: is 4-D with {volumes} volumes; choose one with volume=N "
                "(--volume N) or read them all as channels with volumes_as_channels=True"
            )
        return 0, 1
    if not 0 <= volume < volumes:
        raise ReaderError(
            f"{path}: volume {volume} does not exist; the file has {volumes} volume(s), "
            f"numbered 0..{volumes - 1}"
        )
    return volume, 1


class NiftiSource(FileSourceBase[NiftiImage]):
    """A NIfTI volume read lazily as ``(C, i, j, k)`` in the file's voxel order.

    A 3-D file gives one channel. A 4-D file needs ``volume`` (one channel)
    or ``volumes_as_channels`` (C = the 4th dimension). ``nodata`` is an
    optional value meaning "no data"; NaN always is, for float data.
    """

    kind: Literal["raster", "volume"] = "volume"  # the Protocol's type, so instances conform

    def __init__(
        self,
        path: str | Path | ObjectPath,
        *,
        volume: int | None = None,
        volumes_as_channels: bool = False,
        nodata: float | None = None,
    ) -> None:
        self.path = as_location(path)  # a local file or an object (read through fsspec)
        size = check_input_file(self.path)
        try:
            img = _load(self.path)
        except _LOAD_ERRORS as e:
            raise ReaderError(_load_error(self.path, e)) from None
        file_shape = tuple(int(n) for n in img.shape)
        if len(file_shape) < 2:
            raise ReaderError(f"{self.path}: has shape {file_shape}; a volume needs 3 axes")
        if min(file_shape) < 1:
            raise ReaderError(
                f"{self.path}: has shape {file_shape}; every axis needs at least one voxel"
            )
        self._file_ndim = len(file_shape)
        self._volume, self._channels = _select_volumes(
            file_shape, volume, volumes_as_channels, self.path
        )
        # a 2-D file is a volume one voxel thick along k
        k = file_shape[2] if len(file_shape) >= 3 else 1
        self._shape = (file_shape[0], file_shape[1], k)
        self._check_complete(img, size)
        self._dtype = self._probe_dtype(img)
        self._nodata = check_user_nodata(nodata, self._dtype, self.path)
        self._geometry = _geometry(img, self.path)
        if self._volume is None:
            self._band_names = tuple(f"volume_{t}" for t in range(self._channels))
        else:
            self._band_names = (f"volume_{self._volume}",)
        self._checksum: str | None = None
        self._handles = self._new_handles()

    # -- construction helpers ------------------------------------------------

    def _new_handles(self) -> ThreadHandles[NiftiImage]:
        return ThreadHandles(functools.partial(_load, self.path), _drop_image)

    def _check_complete(self, img: NiftiImage, size: int) -> None:
        """Catch truncated files now: nibabel loads them and fails only on reading."""
        proxy: Any = img.dataobj
        expected = int(proxy.offset) + math.prod(proxy.shape) * np.dtype(proxy.dtype).itemsize
        if self.path.name.lower().endswith(".gz"):
            if _gzip_size_matches(self.path, expected):
                return
            try:
                found = _gzip_length(self.path)
            except (OSError, EOFError, zlib.error) as e:
                raise ReaderError(
                    f"{self.path}: truncated or damaged gzip stream ({one_line(e)}); "
                    "copy or export the file again"
                ) from None
        else:
            found = size
        if found < expected:
            raise ReaderError(
                f"{self.path}: truncated NIfTI: the header promises {expected} bytes of "
                f"header and voxels, the file holds {found}; copy or export it again"
            )

    def _probe_dtype(self, img: NiftiImage) -> np.dtype:
        """The dtype reads return: after scaling (nibabel picks it from slope/inter)."""
        try:
            probe = np.asarray(img.dataobj[(slice(0, 1),) * self._file_ndim])
        except _LOAD_ERRORS as e:
            raise ReaderError(_load_error(self.path, e)) from None
        dtype = probe.dtype.newbyteorder("=")
        if dtype.kind not in "biuf":
            raise ReaderError(
                f"{self.path}: {data_dtype(img)} voxels (complex or RGB) cannot be "
                "segmented; convert the volume to a real-valued type"
            )
        return dtype

    # -- Source protocol -------------------------------------------------------

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def band_names(self) -> tuple[str, ...]:
        return self._band_names

    @property
    def nodata(self) -> float | None:
        return self._nodata

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """One k-slice: NIfTI voxels are stored i fastest, so a slice is contiguous."""
        return (self._shape[0], self._shape[1], 1)

    @property
    def geometry(self) -> VolumeGeometry:
        return self._geometry

    @property
    def volume(self) -> int | None:
        """The 4th-dimension index read, or None when all volumes are channels."""
        return self._volume

    def read(self, region: Region) -> ReadResult:
        r = normalize_region(region, self._shape)
        shape = region_shape(r)
        if 0 in shape:
            return ReadResult(np.empty((self._channels, *shape), self._dtype), np.ones(shape, bool))
        img = self._handles.get()
        data = mapped_empty((self._channels, *shape), self._dtype)
        # slabs of k-slices, in file order (a .nii.gz stream never rewinds): nibabel's
        # temporaries stay one slab in size instead of two copies of the region
        slab = max(1, SLAB_BYTES // (shape[0] * shape[1] * self._channels * data.itemsize))
        i, j, k = r
        for start in range(k.start, k.stop, slab):
            part = (i, j, slice(start, min(start + slab, k.stop)))
            try:
                raw = np.asarray(img.dataobj[self._slicer(part)])
            except _LOAD_ERRORS as e:
                bounds = ", ".join(f"{s.start}:{s.stop}" for s in r)
                raise ReaderError(
                    f"{self.path}: reading voxels [{bounds}] failed ({one_line(e)}); "
                    "the file may be damaged"
                ) from None
            if self._volume is None and self._file_ndim >= 4:
                raw = np.moveaxis(raw, -1, 0)  # volumes become channels
            # native byte order and C order (big-endian files, Fortran layout) in the copy
            data[..., start - k.start : part[2].stop - k.start] = raw.reshape(
                (self._channels, *region_shape(part))
            )
        return ReadResult(data, valid_mask(data, (self._nodata,) * self._channels))

    def _slicer(self, region: tuple[slice, ...]) -> tuple[slice | int, ...]:
        spatial: tuple[slice | int, ...] = region[: min(self._file_ndim, 3)]
        if self._file_ndim < 4:
            return spatial
        rest = (0,) * (self._file_ndim - 4)
        fourth: slice | int = slice(None) if self._volume is None else self._volume
        return (*spatial, fourth, *rest)

    # -- identity ------------------------------------------------------------

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("NiftiSource", *file_token(self.path), self._volume, self._channels, self._nodata)

    def __repr__(self) -> str:
        return (
            f"NiftiSource({str(self.path)!r}, volume={self._volume}, "
            f"channels={self._channels}, nodata={self._nodata})"
        )


def best_affine(header: Any) -> tuple[npt.NDArray[np.float64], int, int]:
    """sform if sform_code > 0, else qform if qform_code > 0, else the pixdim fallback."""
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    sform_code, qform_code = int(sform_code or 0), int(qform_code or 0)
    if sform_code > 0:
        affine = sform
    elif qform_code > 0:
        affine = qform
    else:
        affine = header.get_base_affine()
    return np.asarray(affine, dtype=np.float64), sform_code, qform_code


def _geometry(img: NiftiImage, path: Path | ObjectPath) -> VolumeGeometry:
    affine, sform_code, qform_code = best_affine(img.header)
    finite = bool(np.all(np.isfinite(affine)))
    codes = aff2axcodes(affine) if finite else (None, None, None)
    if any(c is None for c in codes):
        raise ReaderError(
            f"{path}: its affine is degenerate ({affine[:3].tolist()}); fix the header's "
            "sform/qform"
        )
    i, j, k = (str(c) for c in codes)
    zi, zj, zk = (float(z) for z in voxel_sizes(affine))
    return VolumeGeometry(
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        sform_code=sform_code,
        qform_code=qform_code,
        orientation=(i, j, k),
        zooms=(zi, zj, zk),
    )
