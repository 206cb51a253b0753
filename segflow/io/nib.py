"""The one door into nibabel: typed wrappers of the few nibabel calls segflow makes.

nibabel ships without complete type hints, so its calls are made here through an
untyped handle and their results turned into plain typed values (numpy arrays,
tuples, dtypes). Everything else in segflow calls these.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import IO, Any

import nibabel
import numpy as np
import numpy.typing as npt
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

NiftiImage = nibabel.Nifti1Image | nibabel.Nifti2Image
NiftiHeader = nibabel.Nifti1Header | nibabel.Nifti2Header
FloatArray = npt.NDArray[np.float64]

_nib: Any = nibabel  # untyped: results are converted before they leave this module

__all__ = [
    "HeaderDataError",
    "ImageFileError",
    "NiftiHeader",
    "NiftiImage",
    "aff2axcodes",
    "axcodes2ornt",
    "data_dtype",
    "inv_ornt_aff",
    "io_orientation",
    "load",
    "new_header",
    "ornt_transform",
    "save_volume",
    "voxel_sizes",
    "write_header",
]


# --- reading -------------------------------------------------------------------------------------


def load(path: str | os.PathLike[str], **options: Any) -> object:
    """``nibabel.load``; the caller checks which image class it got."""
    image: object = _nib.load(path, **options)
    return image


def load_stream(handle: Any, *, gz: bool) -> object:
    """A NIfTI image read from a file object (an object in storage), gunzipped when ``gz``;
    its voxel proxy reads from that file object on demand."""
    import gzip

    stream = gzip.GzipFile(fileobj=handle, mode="rb") if gz else handle
    try:
        image: object = _nib.Nifti1Image.from_stream(stream)
    except _nib.filebasedimages.ImageFileError:
        stream.seek(0)
        image = _nib.Nifti2Image.from_stream(stream)
    return image


def data_dtype(source: NiftiImage | NiftiHeader) -> np.dtype[Any]:
    """The on-disk voxel dtype of an image or header."""
    dtype: np.dtype[Any] = np.dtype(_nib_any(source).get_data_dtype())
    return dtype


# --- geometry ------------------------------------------------------------------------------------


def aff2axcodes(affine: npt.ArrayLike) -> tuple[str | None, ...]:
    """Axis codes (e.g. ``("L", "P", "S")``) of a voxel-to-world affine; None for a dead axis."""
    return tuple(None if c is None else str(c) for c in _nib.aff2axcodes(affine))


def voxel_sizes(affine: npt.ArrayLike) -> FloatArray:
    return _floats(_nib.affines.voxel_sizes(affine))


def io_orientation(affine: npt.ArrayLike) -> FloatArray:
    return _floats(_nib.orientations.io_orientation(affine))


def axcodes2ornt(codes: Sequence[str]) -> FloatArray:
    return _floats(_nib.orientations.axcodes2ornt(codes))


def ornt_transform(start: FloatArray, end: FloatArray) -> FloatArray:
    return _floats(_nib.orientations.ornt_transform(start, end))


def inv_ornt_aff(ornt: FloatArray, shape: tuple[int, ...]) -> FloatArray:
    return _floats(_nib.orientations.inv_ornt_aff(ornt, shape))


# --- writing -------------------------------------------------------------------------------------


def new_header(
    shape: Sequence[int],
    dtype: np.dtype[Any],
    affine: FloatArray,
    *,
    qform_code: int,
    sform_code: int,
    nifti2: bool = False,
) -> NiftiHeader:
    """A single-file label header: shape, dtype, both forms, mm units, no scaling, intent label."""
    h = _nib.Nifti2Header() if nifti2 else _nib.Nifti1Header()
    header: NiftiHeader = h
    h.set_data_shape(tuple(int(n) for n in shape))
    h.set_data_dtype(dtype)
    h.set_qform(affine, code=int(qform_code))  # also sets pixdim (zooms, qfac)
    h.set_sform(affine, code=int(sform_code))
    h.set_xyzt_units("mm")
    h.set_slope_inter(1.0, 0.0)
    h.set_intent("label", name="segflow")
    return header


def write_header(header: NiftiHeader, f: IO[bytes]) -> int:
    """Write ``header`` at the start of ``f``; returns the offset where voxels begin."""
    h = _nib_any(header)
    h.write_to(f)
    return int(h.get_data_offset())


def save_volume(
    path: str | os.PathLike[str],
    data: npt.NDArray[Any],
    affine: FloatArray,
    *,
    descrip: str,
    disk_dtype: npt.DTypeLike,
    slope_inter: tuple[float, float] | None = None,
    intent: str | None = None,
) -> None:
    """Write a NIfTI-1 volume with ``affine`` as sform and qform (code 1, scanner), in mm."""
    img = _nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)  # nearest rigid+zoom form when the affine has shears
    img.header["descrip"] = descrip.encode()[:79]
    img.header.set_data_dtype(disk_dtype)
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    if intent is not None:
        img.header.set_intent(intent)
    _nib.save(img, path)


def _nib_any(value: object) -> Any:
    return value


def _floats(value: object) -> FloatArray:
    return np.asarray(value, dtype=np.float64)
