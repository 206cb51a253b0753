"""Cheap checks and hashes of files, with no heavy imports.

The command checks its inputs with these before torch, rasterio or dask are imported,
so a wrong path fails in a second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from segflow.errors import ReaderError
from segflow.io.uris import ObjectPath

__all__ = ["check_input_file", "check_readable", "sha256_file"]


def check_input_file(path: Path | ObjectPath) -> int:
    """A one-line ReaderError unless ``path`` is a non-empty file this process can read;
    returns its size.

    Cheap on purpose: the command runs it before importing torch, so a wrong path
    fails in a second instead of after the imports. An object in storage is asked
    for its size (one request; a wrong bucket, key or credentials fail here).
    """
    if isinstance(path, ObjectPath):
        from segflow.io.remote import check_object

        return check_object(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ReaderError(f"{path}: file not found; check the path") from None
    except OSError as exc:
        raise ReaderError(f"{path}: cannot be accessed ({exc.strerror})") from None
    if path.is_dir():
        raise ReaderError(f"{path}: is a directory; give the path of an image file")
    if size == 0:
        raise ReaderError(f"{path}: file is empty (0 bytes); copy or export it again")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ReaderError(
            f"{path}: cannot be read ({exc.strerror}); check its permissions"
        ) from None
    return size


def check_readable(path: Path | ObjectPath) -> None:
    """:func:`check_input_file`, for callers that do not need the size."""
    check_input_file(path)


def sha256_file(path: str | Path | ObjectPath, block: int = 1 << 20) -> str:
    """sha256 of a file (an input or a model), hex, read in blocks so memory stays flat."""
    if isinstance(path, ObjectPath):
        from segflow.io.remote import sha256_object

        return sha256_object(path)
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
