"""A DICOM series (folder, zip, list of files, or one file of it) as a lazy volume Source.

Headers are read once, when the source opens; pixels are decoded slice by slice (with
pydicom's pixel-data plugins, so compressed transfer syntaxes read too) and only for the
slices a region covers, so a 2000-slice series never sits in memory. Values are the
modality values: RescaleSlope/Intercept of each slice applied.

Series selection: a folder or zip holding one image series reads it; with several, pass
``series=`` (a SeriesInstanceUID) or give the path of one file of the series (its folder is
searched for the rest). Otherwise the error lists the series found, one per entry.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from segflow.errors import ConfigError, ReaderError
from segflow.heap import mapped_empty
from segflow.io.dicom_files import Scan, SeriesInfo, SliceRef, scan_dicom
from segflow.io.dicom_geometry import series_grid
from segflow.io.lazy import (
    FileSourceBase,
    ThreadHandles,
    check_user_nodata,
    normalize_region,
    one_line,
    region_shape,
    valid_mask,
)
from segflow.io.nib import aff2axcodes, voxel_sizes
from segflow.io.source import ReadResult, Region, VolumeGeometry

__all__ = ["DicomSeriesSource", "list_series", "open_dicom", "series_inputs"]

Archive = zipfile.ZipFile | None
DicomInput = str | Path | Sequence[str | Path]
_INTEGER_TYPES = (np.uint8, np.int16, np.uint16, np.int32)


def list_series(path: DicomInput) -> Scan:
    """Every image series under ``path`` (folder, zip or files) and the files skipped."""
    return scan_dicom(_scan_target(path))


def series_inputs(folder: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """One ``(name, path)`` per image series under ``folder``, for ``plan_items``; and the skips.

    The path is one file of the series (``open_source`` reads its whole series from
    that file's folder); the name says whose series it is: ``<PatientID>_<Modality><number>_
    <end of the SeriesInstanceUID>``.
    """
    scan = list_series(folder)
    inputs = []
    for info in scan.series.values():
        number = "" if info.number is None else str(info.number)
        name = f"{info.patient_id or 'patient'}_{info.modality}{number}_{info.uid[-8:]}"
        inputs.append(
            (
                "".join(c if c.isalnum() or c in "-_." else "_" for c in name),
                Path(info.slices[0].file.path),
            )
        )
    return inputs, scan.skipped


def open_dicom(
    path: Path,
    *,
    series: str | None = None,
    nodata: float | None = None,
    bands: Sequence[int] | None = None,
    volume: int | None = None,
    volumes_as_channels: bool = False,
) -> DicomSeriesSource:
    """``open_source`` for DICOM: refuses the options of the other readers."""
    if bands is not None:
        raise ConfigError(f"bands= applies to rasters; {path.name} is a DICOM series")
    if volume is not None or volumes_as_channels:
        raise ConfigError(
            f"volume= / volumes_as_channels= apply to 4-D NIfTI volumes; {path.name} is DICOM"
        )
    return DicomSeriesSource(path, series=series, nodata=nodata)


def _scan_target(path: DicomInput) -> Path | list[Path]:
    if isinstance(path, str | Path):
        return Path(path)
    return [Path(p) for p in path]


def _siblings(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.is_file())


def _series_of_file(path: Path) -> str:
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except (OSError, ValueError, EOFError) as exc:
        raise ReaderError(f"{path}: cannot be read as DICOM ({one_line(exc)})") from None
    return str(header.get("SeriesInstanceUID", ""))


def _choose(scan: Scan, series: str | None, where: str) -> SeriesInfo:
    """The series asked for, or the only one; a one-line error listing them otherwise."""
    if not scan.series:
        why = "; ".join(scan.skipped[:3]) + (" ..." if len(scan.skipped) > 3 else "")
        raise ReaderError(
            f"{where}: no DICOM image series found"
            + (f" ({len(scan.skipped)} file(s) skipped: {why})" if why else "")
        )
    listing = "; ".join(info.label() for info in scan.series.values())
    if series is not None:
        if series not in scan.series:
            raise ReaderError(f"{where}: has no series {series}; it holds: {listing}")
        return scan.series[series]
    if len(scan.series) > 1:
        raise ReaderError(
            f"{where}: holds {len(scan.series)} image series: {listing}; choose one with "
            "series=UID (--series) or give the path of one file of the series"
        )
    return next(iter(scan.series.values()))


def _value_dtype(slices: Sequence[SliceRef]) -> np.dtype:
    """The smallest type that holds every modality value: integer when scaling keeps integers."""
    if any(s.slope != 1.0 or s.intercept != int(s.intercept) for s in slices):
        return np.dtype(np.float32)
    bits, signed = max(s.bits_stored for s in slices), slices[0].signed
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    lowest = low + min(int(s.intercept) for s in slices)
    highest = high + max(int(s.intercept) for s in slices)
    for candidate in _INTEGER_TYPES:
        info = np.iinfo(candidate)
        if info.min <= lowest and highest <= info.max:
            return np.dtype(candidate)
    return np.dtype(np.float64)


def _open_archive(path: str) -> Archive:
    return zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None


def _close_archive(archive: Archive) -> None:
    if archive is not None:
        archive.close()


class DicomSeriesSource(FileSourceBase[Archive]):
    """One DICOM image series read lazily as ``(1, i, j, k)``: (column, row, slice).

    ``path`` is a folder (searched recursively), a zip, one file of the series, or a
    list of files. ``skipped`` lists the files that were not slices of an image series
    (non-DICOM files, SR/RTSTRUCT/SEG objects, scouts) with the reason.
    """

    kind: Literal["raster", "volume"] = "volume"

    def __init__(
        self, path: DicomInput, *, series: str | None = None, nodata: float | None = None
    ) -> None:
        target = _scan_target(path)
        if isinstance(target, Path) and not target.exists():
            raise ReaderError(f"{target}: not found; check the path")
        if isinstance(target, Path) and target.is_file() and not zipfile.is_zipfile(target):
            series = series or _series_of_file(target)  # one file stands for its series
            scan = scan_dicom(_siblings(target))
        else:
            scan = scan_dicom(target)
        self.path = target if isinstance(target, Path) else _common_folder(target)
        self.series = _choose(scan, series, str(self.path))
        self.skipped = tuple(scan.skipped)
        grid = series_grid(self.series.slices, f"{self.path} series {self.series.uid}")
        self.slices = grid.slices
        self._shape = grid.shape
        self._dtype = _value_dtype(self.slices)
        self._nodata = check_user_nodata(nodata, self._dtype, self.path)
        self._geometry = _geometry(grid.affine)
        self._zip = self.slices[0].file.path if self.slices[0].file.member else None
        self._token = _files_token(self.slices)
        self._checksum: str | None = None
        self._handles = self._new_handles()

    def _new_handles(self) -> ThreadHandles[Archive]:
        zip_path = self._zip
        return ThreadHandles(lambda: _open_archive(zip_path) if zip_path else None, _close_archive)

    # -- Source protocol -------------------------------------------------------

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def channels(self) -> int:
        return 1

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def band_names(self) -> tuple[str, ...]:
        return (self.series.modality or "image",)

    @property
    def nodata(self) -> float | None:
        return self._nodata

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """One slice: each is decoded whole."""
        return (self._shape[0], self._shape[1], 1)

    @property
    def geometry(self) -> VolumeGeometry:
        return self._geometry

    @property
    def positions(self) -> npt.NDArray[np.float64]:
        """ImagePositionPatient (LPS mm) of the slices, in voxel order k."""
        return np.asarray([s.position for s in self.slices], dtype=np.float64)

    def read(self, region: Region) -> ReadResult:
        i, j, k = normalize_region(region, self._shape)
        shape = region_shape((i, j, k))
        data = mapped_empty((1, *shape), self._dtype)
        for index in range(k.start, k.stop):
            plane = self.read_slice(index)  # (rows, columns) = (j, i)
            data[0, :, :, index - k.start] = plane[j, i].T
        return ReadResult(data, valid_mask(data, (self._nodata,)))

    def read_slice(self, index: int) -> npt.NDArray[np.generic]:
        """Modality values of slice ``index`` as ``(rows, columns)``."""
        ref = self.slices[index]
        raw = self._decode(ref)
        if self._dtype.kind == "f":
            return (raw.astype(np.float64) * ref.slope + ref.intercept).astype(self._dtype)
        values = raw.astype(self._dtype)
        if ref.intercept:
            values += self._dtype.type(int(ref.intercept))
        return values

    def _decode(self, ref: SliceRef) -> npt.NDArray[np.generic]:
        archive = self._handles.get()
        try:
            with ref.file.open(archive) as f:
                raw = pixel_array(f, index=ref.frame)
        except (OSError, ValueError, RuntimeError, NotImplementedError, KeyError) as exc:
            raise ReaderError(
                f"{ref.file}: cannot decode its pixel data ({one_line(exc)}); "
                "a compressed transfer syntax may need a pydicom pixel-data plugin"
            ) from None
        if raw.shape != ref.shape:
            raise ReaderError(f"{ref.file}: pixel data is {raw.shape}, the header says {ref.shape}")
        return raw

    # -- identity ------------------------------------------------------------

    def checksum(self) -> str:
        """sha256 over the series' files, in slice order (each file once)."""
        if self._checksum is None:
            digest = hashlib.sha256()
            archive = self._handles.get()
            for ref in dict.fromkeys(s.file for s in self.slices):
                with ref.open(archive) as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
            self._checksum = digest.hexdigest()
        return self._checksum

    def read_headers(self) -> list[Dataset]:
        """The header of each file of the series (no pixels), in slice order."""
        archive = self._handles.get()
        headers: list[Dataset] = []
        for ref in dict.fromkeys(s.file for s in self.slices):
            with ref.open(archive) as f:
                headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        return headers

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("DicomSeriesSource", self.series.uid, self._token, self._nodata)

    def __repr__(self) -> str:
        return (
            f"DicomSeriesSource({str(self.path)!r}, series={self.series.uid!r}, "
            f"shape={self._shape})"
        )


def _common_folder(paths: Sequence[Path]) -> Path:
    if not paths:
        raise ReaderError("no DICOM files given")
    return Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))


def _files_token(slices: Sequence[SliceRef]) -> str:
    """Cheap identity of the series' files (path, size, mtime) for Dask names."""
    digest = hashlib.sha256()
    for ref in dict.fromkeys(s.file for s in slices):
        st = Path(ref.path).stat()
        digest.update(
            f"{Path(ref.path).resolve()}|{ref.member}|{st.st_size}|{st.st_mtime_ns}".encode()
        )
    return digest.hexdigest()


def _geometry(affine: npt.NDArray[np.float64]) -> VolumeGeometry:
    i, j, k = (str(c) for c in aff2axcodes(affine))
    zi, zj, zk = (float(z) for z in voxel_sizes(affine))
    return VolumeGeometry(
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        sform_code=1,  # scanner-anatomical, as dcm2niix writes
        qform_code=1,
        orientation=(i, j, k),
        zooms=(zi, zj, zk),
    )
