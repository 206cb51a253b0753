"""Finding the image slices of DICOM series in a folder, a zip or a list of files.

Every file's header is read (never its pixels) and turned into ``SliceRef`` values: where
the slice is, how its pixels are scaled, and where to read them again. Multi-frame
(enhanced) objects give one ``SliceRef`` per frame from their functional groups. Files that
are not DICOM, non-image objects (SR, RTSTRUCT, SEG, presentation states, ...), localizers
(scouts) and images without patient geometry are skipped, each with a note saying why.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from segflow.errors import ReaderError

__all__ = ["FileRef", "Scan", "SeriesInfo", "SliceRef", "scan_dicom"]

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class FileRef:
    """A DICOM file: a path, or a member of a zip archive."""

    path: str  # the file itself, or the zip that holds it
    member: str | None = None

    def open(self, archive: zipfile.ZipFile | None = None) -> BinaryIO:
        """The file for reading; ``archive`` is the open zip when the file is a member."""
        if self.member is None:
            return Path(self.path).open("rb")
        assert archive is not None
        return cast(BinaryIO, archive.open(self.member))  # a ZipExtFile reads and seeks

    def __str__(self) -> str:
        return self.path if self.member is None else f"{self.path}:{self.member}"


@dataclass(frozen=True)
class SliceRef:
    """One image plane: a single-frame file or one frame of a multi-frame object."""

    file: FileRef
    frame: int | None  # frame index in a multi-frame object; None: single-frame file
    sop_uid: str
    position: Vector  # ImagePositionPatient (LPS, mm) of the first pixel's centre
    orientation: tuple[float, ...]  # ImageOrientationPatient: row then column cosines
    pixel_spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    shape: tuple[int, int]  # (Rows, Columns)
    slope: float
    intercept: float
    bits_stored: int
    signed: bool
    thickness: float  # SpacingBetweenSlices or SliceThickness; 1.0 when neither is set


@dataclass(frozen=True)
class SeriesInfo:
    """What a person needs to recognise a series, and its slices in no particular order."""

    uid: str
    modality: str
    description: str
    number: int | None
    study_uid: str
    patient_id: str
    slices: tuple[SliceRef, ...]

    def label(self) -> str:
        """E.g. ``1.2.3 (CT #3 'thorax 1mm', 120 slices)``."""
        number = f" #{self.number}" if self.number is not None else ""
        text = f" {self.description!r}" if self.description else ""
        return f"{self.uid} ({self.modality}{number}{text}, {len(self.slices)} slices)"


@dataclass
class Scan:
    """The image series found, by SeriesInstanceUID, and the files skipped with why."""

    series: dict[str, SeriesInfo] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


# objects with pixel data that are not images to segment
_NON_IMAGE_MODALITIES = {"SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "SEG", "PR", "KO", "REG", "DOC"}


def scan_dicom(source: Path | Sequence[Path]) -> Scan:
    """Read every header of a folder (recursively), a zip, or a list of files."""
    scan = Scan()
    groups: dict[str, list[SliceRef]] = {}
    headers: dict[str, Dataset] = {}
    for ref, header in _headers(source, scan.skipped):
        slices = image_slices(header, ref)
        if isinstance(slices, str):
            scan.skipped.append(f"{ref.member or Path(ref.path).name}: {slices}")
            continue
        uid = str(header.get("SeriesInstanceUID", ""))
        groups.setdefault(uid, []).extend(slices)
        headers.setdefault(uid, header)
    for uid, slices in groups.items():
        scan.series[uid] = _series_info(uid, headers[uid], slices)
    return scan


def _series_info(uid: str, header: Dataset, slices: list[SliceRef]) -> SeriesInfo:
    number = header.get("SeriesNumber")
    return SeriesInfo(
        uid=uid,
        modality=str(header.get("Modality", "")),
        description=str(header.get("SeriesDescription", "")),
        number=int(number) if number not in (None, "") else None,
        study_uid=str(header.get("StudyInstanceUID", "")),
        patient_id=str(header.get("PatientID", "")),
        slices=tuple(slices),
    )


# -- reading headers ---------------------------------------------------------------


def _files(source: Path | Sequence[Path]) -> Iterator[tuple[FileRef, zipfile.ZipFile | None]]:
    if not isinstance(source, Path):
        for path in source:
            yield FileRef(str(Path(path))), None
    elif source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            yield FileRef(str(path)), None
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield FileRef(str(source), info.filename), archive
    else:
        raise ReaderError(f"{source}: is neither a folder nor a zip of DICOM files")


def _headers(
    source: Path | Sequence[Path], skipped: list[str]
) -> Iterator[tuple[FileRef, Dataset]]:
    """(file, header) for every readable DICOM file; the others are noted in ``skipped``."""
    for ref, archive in _files(source):
        name = ref.member or Path(ref.path).name
        try:
            with ref.open(archive) as f:
                header = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            skipped.append(f"{name}: not a DICOM file")
            continue
        except (OSError, EOFError, ValueError, KeyError) as exc:
            skipped.append(f"{name}: unreadable DICOM ({' '.join(str(exc).split())})")
            continue
        yield ref, header


# -- headers to slices -------------------------------------------------------------


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


def skip_reason(header: Dataset) -> str | None:
    """Why this object is not an image slice to segment, or None when it is one."""
    sop_class = UID(str(header.get("SOPClassUID", "")))
    modality = str(header.get("Modality", ""))
    if modality in _NON_IMAGE_MODALITIES or "Image Storage" not in sop_class.name:
        kind = modality or sop_class.name or "unknown SOP class"
        return f"non-image object ({kind})"
    if "LOCALIZER" in (str(v).upper() for v in header.get("ImageType", [])):
        return "localizer (scout) image"
    if int(header.get("SamplesPerPixel", 1)) != 1:
        return "colour image (segflow reads monochrome CT/MR/PET slices)"
    return None


def image_slices(header: Dataset, ref: FileRef) -> list[SliceRef] | str:
    """The slices of one object, or why it has none to segment."""
    reason = skip_reason(header)
    if reason is not None:
        return reason
    if "PerFrameFunctionalGroupsSequence" in header:
        return _frames(header, ref)
    if not all(k in header for k in ("ImagePositionPatient", "ImageOrientationPatient")):
        return "no patient geometry (ImagePositionPatient/ImageOrientationPatient)"
    return [_slice(header, header, ref, None)]


def _slice(header: Dataset, plane: Dataset, ref: FileRef, frame: int | None) -> SliceRef:
    """A SliceRef from ``plane`` (the header, or a frame's merged functional groups)."""
    spacing = plane.get("PixelSpacing") or header.get("ImagerPixelSpacing") or (1.0, 1.0)
    position = _floats(plane.ImagePositionPatient)
    return SliceRef(
        file=ref,
        frame=frame,
        sop_uid=str(header.SOPInstanceUID),
        position=(position[0], position[1], position[2]),
        orientation=_floats(plane.ImageOrientationPatient),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        shape=(int(header.Rows), int(header.Columns)),
        slope=float(plane.get("RescaleSlope", 1.0) or 1.0),
        intercept=float(plane.get("RescaleIntercept", 0.0) or 0.0),
        bits_stored=int(header.get("BitsStored", header.get("BitsAllocated", 16))),
        signed=int(header.get("PixelRepresentation", 0)) == 1,
        thickness=_thickness(plane, header),
    )


def _thickness(plane: Dataset, header: Dataset) -> float:
    for source in (plane, header):
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            value = source.get(key)
            if value not in (None, "") and float(value) > 0:
                return float(value)
    return 1.0


# functional group sequences holding the attributes a plane needs
_FRAME_GROUPS = (
    "PlanePositionSequence",
    "PlaneOrientationSequence",
    "PixelMeasuresSequence",
    "PixelValueTransformationSequence",
)


def _frames(header: Dataset, ref: FileRef) -> list[SliceRef] | str:
    """One SliceRef per frame of an enhanced multi-frame object."""
    shared_groups = header.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else Dataset()
    slices = []
    for index, per_frame in enumerate(header.PerFrameFunctionalGroupsSequence):
        plane = Dataset()
        for key in ("RescaleSlope", "RescaleIntercept"):
            if key in header:
                plane[key] = header[key]
        for group in (shared, per_frame):  # per-frame values win over shared ones
            for name in _FRAME_GROUPS:
                if name in group and len(group[name].value):
                    plane.update(group[name].value[0])
        if not all(k in plane for k in ("ImagePositionPatient", "ImageOrientationPatient")):
            return f"frame {index + 1} has no plane position/orientation"
        slices.append(_slice(header, plane, ref, index))
    return slices
