"""Which paths are DICOM inputs, decided without importing pydicom.

A folder, a ``.zip``, a ``.dcm``/``.dicom``/``.ima`` file, or any file with the DICOM
preamble (``DICM`` at byte 128: PACS exports often have no suffix) is read as DICOM.
``open_source`` asks this for paths whose suffix names no other reader.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DICOM_SUFFIXES", "has_dicom_preamble", "is_dicom_folder", "is_dicom_input"]

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".zip")
_PREAMBLE = 128
_PROBE_FILES = 64  # a folder is DICOM when one of its first files is


def has_dicom_preamble(path: Path) -> bool:
    """True when the file has a DICOM Part 10 header (``DICM`` after the 128-byte preamble)."""
    try:
        with path.open("rb") as f:
            f.seek(_PREAMBLE)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_input(path: Path) -> bool:
    """A folder, a zip, a DICOM-suffixed file, or a file that starts like DICOM."""
    if path.is_dir():
        return True
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    return path.is_file() and has_dicom_preamble(path)


def is_dicom_folder(path: Path) -> bool:
    """True for a folder with a DICOM file among its first files (searched recursively)."""
    if not path.is_dir():
        return False
    for n, candidate in enumerate(p for p in path.rglob("*") if p.is_file()):
        if n >= _PROBE_FILES:
            return False
        if candidate.name.lower().endswith(DICOM_SUFFIXES[:3]) or has_dicom_preamble(candidate):
            return True
    return False
