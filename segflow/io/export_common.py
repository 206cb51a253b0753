"""Checks shared by the label exporters (COG, NIfTI) before they write anything."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from segflow.errors import ConfigError, OutputError
from segflow.io.source import RasterGeometry, VolumeGeometry
from segflow.io.uris import ObjectPath
from segflow.io.zarr_sink import ZarrSink

G = TypeVar("G", RasterGeometry, VolumeGeometry)


def open_exportable(
    store: str | os.PathLike[str] | ObjectPath | ZarrSink,
    kind: type[G],
    wrong_kind: str,
    *,
    need_labels: bool = True,
) -> tuple[ZarrSink, G]:
    """The store and its geometry, once it is known to be complete, of ``kind``, and to
    hold labels (unless ``need_labels`` is false: another array is exported).

    ``wrong_kind`` ends the ConfigError raised for the other kind of store,
    e.g. "is a volume output; export it with --to nifti".
    """
    sink = ZarrSink.open(store) if not isinstance(store, ZarrSink) else store
    geometry = sink.geometry
    if not isinstance(geometry, kind):
        raise ConfigError(f"{sink.path} {wrong_kind}")
    ZarrSink.open_finished(sink, need_labels=need_labels, purpose="exporting")
    return sink, geometry


def prepare_target(target: Path, overwrite: bool, ending: str) -> None:
    """Refuse an existing file (unless ``overwrite``) or a folder; create the parent folder.

    ``ending`` is the file ending the folder error suggests, e.g. ".tif".
    """
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists; pass --overwrite to replace it")
    if target.is_dir():
        raise OutputError(f"{target} is a folder; give a file name ending in {ending}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {target.parent}: {exc.strerror or exc}") from exc
