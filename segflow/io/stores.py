"""Where a store lives: a local folder or a prefix in object storage.

A store in object storage is a prefix of keys (``s3://bucket/out/scene.zarr/...``)
that zarr reads and writes through its fsspec store; there are no folders to make,
and existence means that its ``zarr.json`` is there. These helpers give the sink
the same four answers for both: where, does it exist, may it be created, remove it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from segflow.errors import OutputError, SegflowError
from segflow.io.uris import ObjectPath, as_location

__all__ = [
    "StorePath",
    "check_can_create_remote",
    "discard_store",
    "is_store",
    "remove_remote_store",
    "store_like",
    "store_location",
]

StorePath = Path | ObjectPath


def store_location(path: str | os.PathLike[str] | ObjectPath) -> StorePath:
    """A local folder path or an object-storage prefix for a store."""
    return as_location(path)


def store_like(path: StorePath) -> Path | str:
    """What zarr opens: a local folder (LocalStore), or a URL (its fsspec store)."""
    return path.uri if isinstance(path, ObjectPath) else path


def is_store(path: ObjectPath) -> bool:
    """A zarr store (v3 or v2 metadata) is under this prefix."""
    return any((path / marker).is_file() for marker in ("zarr.json", ".zgroup", ".zarray"))


def check_can_create_remote(target: ObjectPath) -> None:
    """The bucket must exist and be reachable with these credentials before any work."""
    from segflow.io import remote

    bucket = ObjectPath(f"{target.scheme}://{target.bucket}")
    with remote.storage_errors(target, OutputError):
        fs = remote.filesystem(target)
        if not fs.exists(bucket.key):
            raise OutputError(f"bucket {target.bucket} of {target} does not exist; check the URI")


def discard_store(target: StorePath) -> None:
    """Remove a store this run created and must not leave behind (best effort)."""
    if isinstance(target, ObjectPath):
        with contextlib.suppress(SegflowError):
            remove_remote_store(target)
        return
    shutil.rmtree(target, ignore_errors=True)


def remove_remote_store(target: ObjectPath) -> None:
    """--overwrite on object storage: delete the store's keys, and nothing that is not a store."""
    from segflow.io import remote

    if target.is_dir() and not is_store(target):
        raise OutputError(f"{target} holds objects but no zarr store; refusing to delete them")
    remote.remove_prefix(target)
