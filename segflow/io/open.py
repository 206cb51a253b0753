"""``open_source``: the one entry point from a path to a Source.

The suffix picks the reader (.tif/.tiff/.gtiff: GeoTIFF, .nii/.nii.gz: NIfTI);
a folder, a .zip, a .dcm file or a file starting like DICOM is a DICOM series
(``segflow.io.dicom``); any other file is offered to rasterio, which reads most
raster formats.
Options that only make sense for the other kind of file are refused rather
than silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segflow.errors import ConfigError, ReaderError
from segflow.io.dicom_paths import is_dicom_input
from segflow.io.files import check_input_file
from segflow.io.geotiff import GeoTiffSource, NotARasterError
from segflow.io.source import Source
from segflow.io.stac_names import is_stac_input
from segflow.io.uris import ObjectPath, as_location

__all__ = ["RASTER_SUFFIXES", "VOLUME_SUFFIXES", "open_source", "source_kind"]

RASTER_SUFFIXES = (".tif", ".tiff", ".gtiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz")


def source_kind(path: str | Path | ObjectPath) -> str | None:
    """``"raster"`` or ``"volume"`` from the file name alone; None when it does not say."""
    name = as_location(path).name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    return None


def open_source(
    path: str | Path | ObjectPath,
    *,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    volume: int | None = None,
    volumes_as_channels: bool = False,
    series: str | None = None,
    band_names: Sequence[str] | None = None,
) -> Source:
    """Open ``path`` lazily with the reader its suffix calls for.

    A STAC Item (``item.json``, ``items.json#ID``) is read as the bands the model
    names in ``band_names``, stacked on one grid. ``bands`` applies to rasters; ``volume`` / ``volumes_as_channels`` to
    NIfTI volumes; ``series`` (a SeriesInstanceUID) to DICOM; ``nodata`` to all.
    """
    if is_stac_input(str(path)):  # the model's band_names choose the item's assets
        from segflow.io.stac import open_stac_item

        if bands is not None or volume is not None or series is not None:
            raise ConfigError(f"{path}: a STAC item's bands are chosen by the model's band names")
        return open_stac_item(str(path), band_names, nodata)
    path = as_location(path)
    kind = source_kind(path)
    remote = isinstance(path, ObjectPath)
    if isinstance(path, Path) and kind is None and is_dicom_input(path):
        from segflow.io.dicom import open_dicom  # pydicom only when DICOM is read

        return open_dicom(
            path,
            series=series,
            nodata=nodata,
            bands=bands,
            volume=volume,
            volumes_as_channels=volumes_as_channels,
        )
    if series is not None:
        where = "an object in storage" if remote else "not one"
        raise ConfigError(f"series= applies to DICOM inputs; {path.name} is {where}")
    if kind == "volume":
        if bands is not None:
            raise ConfigError(f"bands= applies to rasters; {path.name} is a NIfTI volume")
        from segflow.io.nifti import NiftiSource  # nibabel (and pydicom) only for volumes

        return NiftiSource(
            path, volume=volume, volumes_as_channels=volumes_as_channels, nodata=nodata
        )
    if volume is not None or volumes_as_channels:
        raise ConfigError(
            f"volume= / volumes_as_channels= apply to 4-D NIfTI volumes; {path.name} is not one"
        )
    if kind == "raster":
        return GeoTiffSource(path, bands=bands, nodata=nodata)
    if not remote:
        check_input_file(path)  # a missing file says so, not "unknown format"
    try:
        return GeoTiffSource(path, bands=bands, nodata=nodata)
    except NotARasterError:
        raise ReaderError(
            f"{path}: is not a GeoTIFF or NIfTI file; segflow reads .tif/.tiff/.nii/.nii.gz"
        ) from None
