"""Exports to object storage: written locally, then put as one object.

GDAL's COG driver (and GeoPackage, NIfTI writers) seek back into the file they write,
which object storage cannot do; and an object appears whole or not at all when it is
put. So an export to a URI is written to a local temporary folder with the ordinary
local writer, then uploaded in one put: readers never see a partial file, and a
failed export leaves nothing behind. Sidecars the writer puts beside the file (NIfTI
label tables) go beside the object, before it, so the main object appears last.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from segflow.errors import OutputError
from segflow.io.uris import ObjectPath

__all__ = ["export_to_object"]


def export_to_object(
    target: ObjectPath, overwrite: bool, write: Callable[[Path], object]
) -> ObjectPath:
    """``write(local_path)`` into a temporary file named like ``target``, then upload it.

    Other files ``write`` leaves in the folder are uploaded beside ``target`` first.
    """
    from segflow.io import remote

    if not overwrite and remote.exists(target):
        raise OutputError(f"{target} exists; pass --overwrite to replace it")
    from segflow.io.stores import check_can_create_remote

    check_can_create_remote(target)  # a missing bucket or wrong credentials, before the work
    with tempfile.TemporaryDirectory(prefix="segflow-export-") as folder:
        local = Path(folder) / target.name
        write(local)
        if not local.is_file():
            raise OutputError(f"nothing was written for {target}")
        for sidecar in sorted(p for p in Path(folder).iterdir() if p.is_file() and p != local):
            remote.upload(sidecar, target.with_name(sidecar.name))
        remote.upload(local, target)
    return target
