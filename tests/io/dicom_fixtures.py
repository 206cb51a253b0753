"""DICOM series written with pydicom from arrays, for the DICOM reader and SEG tests.

A series is described by a volume in segflow's voxel order ``(i, j, k)`` = (column, row,
slice) and its LPS geometry: the row direction (along i), the column direction (along j),
the step from one slice to the next, and the first slice's position. ``geometry_from_ras``
turns a NIfTI affine (RAS) into that form, so the real sample volumes become series too.
File names are random and InstanceNumber runs backwards, so a reader that orders slices by
either gives a wrong volume.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SeriesGeometry:
    """Where a series' voxels are, in DICOM's LPS world (mm)."""

    row_dir: tuple[float, float, float]  # direction of increasing column index (i)
    col_dir: tuple[float, float, float]  # direction of increasing row index (j)
    step: tuple[float, float, float]  # from slice k to slice k + 1
    origin: tuple[float, float, float]  # position of voxel (0, 0, 0)
    spacing: tuple[float, float]  # (along i, along j): PixelSpacing reversed

    def position(self, k: float) -> npt.NDArray[np.float64]:
        return np.asarray(self.origin) + k * np.asarray(self.step)


@dataclass(frozen=True)
class SeriesSpec:
    """What to write: a volume, its geometry and the DICOM attributes that vary."""

    volume: npt.NDArray[np.float64]  # (i, j, k) real values (after rescale)
    geometry: SeriesGeometry
    modality: str = "CT"
    slope: float = 1.0
    intercept: float = 0.0
    series_uid: str = field(default_factory=generate_uid)
    study_uid: str = "1.2.826.0.1.3680043.8.498.1"
    frame_uid: str = "1.2.826.0.1.3680043.8.498.2"
    description: str = "test series"
    series_number: int = 1
    compressed: bool = False  # RLE Lossless
    bits: int = 16  # 16: signed int16 stored values; 8: unsigned uint8 (as JPEG Baseline needs)


def _vec(values: Sequence[float] | npt.NDArray[np.float64]) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def geometry_from_ras(affine: npt.NDArray[np.float64]) -> SeriesGeometry:
    """The series geometry of a NIfTI affine (RAS world) whose i and j axes are orthogonal."""
    lps = LPS_FROM_RAS @ np.asarray(affine, dtype=np.float64)
    di, dj = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    return SeriesGeometry(
        row_dir=_vec(lps[:3, 0] / di),
        col_dir=_vec(lps[:3, 1] / dj),
        step=_vec(lps[:3, 2]),
        origin=_vec(lps[:3, 3]),
        spacing=(float(di), float(dj)),
    )


def rotation(axis: Sequence[float], degrees: float) -> npt.NDArray[np.float64]:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    matrix: npt.NDArray[np.float64] = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)
    return matrix


def oriented(
    name: str, spacing: tuple[float, float, float], origin: Sequence[float] = (-60.0, -50.0, 10.0)
) -> SeriesGeometry:
    """A named orientation: axial, sagittal, coronal or oblique (LPS directions)."""
    dirs = {
        "axial": ((1, 0, 0), (0, 1, 0)),
        "sagittal": ((0, 1, 0), (0, 0, -1)),
        "coronal": ((1, 0, 0), (0, 0, -1)),
    }
    if name == "oblique":
        r = rotation((1, 2, 3), 25.0)
        row, col = r @ np.array([1.0, 0, 0]), r @ np.array([0, 1.0, 0])
    else:
        row, col = (np.asarray(v, dtype=np.float64) for v in dirs[name])
    normal = np.cross(row, col)
    return SeriesGeometry(
        _vec(row),
        _vec(col),
        _vec(normal * spacing[2]),
        _vec(origin),
        (spacing[0], spacing[1]),
    )


def coded_volume(shape: tuple[int, int, int], seed: int = 0) -> npt.NDArray[np.float64]:
    """Values that differ along every axis (an axis flip shows), in -1000..2000."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    rng = np.random.default_rng(seed)
    base = 40.0 * i + 7.0 * j + 300.0 * k + rng.integers(0, 5, size=shape) - 1000
    volume: npt.NDArray[np.float64] = np.clip(base, -1000, 2000).astype(np.float64)
    return volume


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _stored(
    spec: SeriesSpec, plane: npt.NDArray[np.float64]
) -> npt.NDArray[np.int16] | npt.NDArray[np.uint8]:
    stored = np.rint((plane - spec.intercept) / spec.slope)
    if spec.bits == 8:
        assert stored.min() >= 0 and stored.max() <= 255, "8-bit stored values are 0..255"
        return stored.astype(np.uint8)
    return stored.astype(np.int16)


def slice_dataset(spec: SeriesSpec, k: int, instance: int) -> Dataset:
    """One slice (plane k of the volume) as a CT/MR image dataset."""
    g = spec.geometry
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage if spec.modality == "CT" else MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Test^Patient"
    ds.PatientID = "SEGFLOW-TEST-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyID = "1"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = spec.series_uid
    ds.SeriesNumber = spec.series_number
    ds.SeriesDescription = spec.description
    ds.Modality = spec.modality
    ds.Manufacturer = "segflow tests"
    ds.FrameOfReferenceUID = spec.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [_ds(v) for v in g.position(k)]
    ds.ImageOrientationPatient = [_ds(v) for v in (*g.row_dir, *g.col_dir)]
    ds.PixelSpacing = [_ds(g.spacing[1]), _ds(g.spacing[0])]  # row spacing first
    ds.SliceThickness = _ds(float(np.linalg.norm(g.step)))
    ds.RescaleSlope = _ds(spec.slope)
    ds.RescaleIntercept = _ds(spec.intercept)
    if spec.modality == "CT":
        ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    plane = _stored(spec, spec.volume[:, :, k].T)  # (rows, columns)
    ds.Rows, ds.Columns = plane.shape
    ds.BitsAllocated = ds.BitsStored = spec.bits
    ds.HighBit = spec.bits - 1
    ds.PixelRepresentation = 1 if spec.bits == 16 else 0
    if spec.compressed:
        ds.compress(RLELossless, plane)
    else:
        ds.PixelData = plane.tobytes()
    return ds


def write_series(folder: Path, spec: SeriesSpec, seed: int = 0) -> list[Path]:
    """Every slice as a file with a random name; InstanceNumber counts backwards."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    depth = spec.volume.shape[2]
    paths = []
    for k in rng.permutation(depth):
        ds = slice_dataset(spec, int(k), instance=depth - int(k))
        path = folder / f"IM{rng.integers(0, 10**9):09d}"
        assert not path.exists(), f"{path} exists: another series here needs another seed"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def compress_series(
    files: Sequence[Path], folder: Path, syntax: UID, **encoding: object
) -> list[Path]:
    """The compressed twin of a series: each file re-encoded with pydicom, same name.

    ``syntax`` is any transfer syntax pydicom has an encoder for (RLE, JPEG-LS, JPEG
    2000); ``encoding`` goes to ``Dataset.compress`` (``jls_error``, ``j2k_cr``, ...).
    Lossy syntaxes get LossyImageCompression = 01, as a PACS writes it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.compress(syntax, **encoding)  # type: ignore[arg-type]
        if any(encoding.get(k) for k in ("jls_error", "j2k_cr", "j2k_psnr")):
            ds.LossyImageCompression = "01"
        ds.save_as(folder / path.name, enforce_file_format=True)
        out.append(folder / path.name)
    return out


def jpeg_baseline_series(files: Sequence[Path], folder: Path, quality: int = 95) -> list[Path]:
    """The JPEG Baseline (8-bit lossy) twin of an 8-bit series, encoded with Pillow.

    pydicom has no JPEG Baseline encoder; Pillow's libjpeg writes each plane and pydicom
    encapsulates it, one fragment per frame, as a modality or PACS would.
    """
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.BitsAllocated == 8, "JPEG Baseline holds 8-bit samples"
        buffer = io.BytesIO()
        Image.fromarray(ds.pixel_array).save(buffer, format="JPEG", quality=quality)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.save_as(folder / path.name, enforce_file_format=True)
        out.append(folder / path.name)
    return out


def write_zip(path: Path, files: Sequence[Path]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f"DICOM/{f.name}")
    return path


def non_image_dataset(spec: SeriesSpec, modality: str, sop_class: UID) -> Dataset:
    """A header-only object (SR, RTSTRUCT, ...) of the same study, in its own series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "SEGFLOW-TEST-1"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    return ds


def write_scout(folder: Path, spec: SeriesSpec) -> Path:
    """A localizer in the same series, at a right angle to the slices (must be skipped)."""
    g = spec.geometry
    scout = replace(
        spec, geometry=replace(g, row_dir=g.col_dir, col_dir=tuple(np.cross(g.row_dir, g.col_dir)))
    )
    ds = slice_dataset(scout, 0, instance=999)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    path = folder / "SCOUT"
    ds.save_as(path, enforce_file_format=True)
    return path


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)
