"""open_source: dispatch on suffix, fallback to rasterio, options checked against the kind."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from segflow.errors import ConfigError, ReaderError
from segflow.io.geotiff import GeoTiffSource
from segflow.io.nifti import NiftiSource
from segflow.io.open import open_source, source_kind
from segflow.io.source import Source
from tests.io.conformance import coord_image, ras, write_geotiff, write_nifti

H, W = 30, 41


@pytest.mark.parametrize("name", ["a.tif", "B.TIFF", "c.gtiff", "d.Tif"])
def test_raster_suffixes(tmp_path: Path, name: str) -> None:
    data = coord_image(3, (H, W), "uint16")
    src = open_source(write_geotiff(tmp_path / name, data), bands=[2], nodata=5)
    assert isinstance(src, GeoTiffSource) and isinstance(src, Source)
    assert src.kind == "raster" and src.channels == 1 and src.nodata == 5
    np.testing.assert_array_equal(src.read((slice(0, H), slice(0, W))).data, data[[1]])


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "V.NII.GZ"])
def test_volume_suffixes(tmp_path: Path, name: str) -> None:
    data = np.moveaxis(coord_image(2, (9, 8, 7), "int16"), 0, -1)
    path = write_nifti(tmp_path / name, data, ras())
    src = open_source(path, volume=1, nodata=-3)
    assert isinstance(src, NiftiSource) and src.kind == "volume"
    assert src.channels == 1 and src.nodata == -3
    np.testing.assert_array_equal(
        src.read((slice(0, 9), slice(0, 8), slice(0, 7))).data[0], data[..., 1]
    )
    assert open_source(path, volumes_as_channels=True).channels == 2


def test_other_raster_formats_go_to_rasterio(tmp_path: Path) -> None:
    data = coord_image(1, (H, W), "uint8")
    envi = tmp_path / "scene.img"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            envi,
            "w",
            driver="ENVI",
            width=W,
            height=H,
            count=1,
            dtype="uint8",
            crs="EPSG:32618",
            transform=rasterio.Affine(10, 0, 0, 0, -10, 0),
        ) as d:
            d.write(data)
    src = open_source(envi)
    assert isinstance(src, GeoTiffSource) and src.geometry.georeferenced
    np.testing.assert_array_equal(src.read((slice(0, H), slice(0, W))).data, data)
    # a GeoTIFF under a name that does not say so is found by content
    renamed = write_geotiff(tmp_path / "scene.dat", data)
    assert isinstance(open_source(renamed), GeoTiffSource)


def test_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n" * 20)
    with pytest.raises(ReaderError) as e:
        open_source(path)
    message = str(e.value)
    assert message == (
        f"{path}: is not a GeoTIFF or NIfTI file; segflow reads .tif/.tiff/.nii/.nii.gz"
    )


@pytest.mark.parametrize("name", ["gone.png", "gone.tif", "gone.nii.gz"])
def test_missing_file_says_not_found(tmp_path: Path, name: str) -> None:
    with pytest.raises(ReaderError, match="not found"):
        open_source(tmp_path / name)


def test_options_for_the_other_kind_are_refused(tmp_path: Path) -> None:
    tif = write_geotiff(tmp_path / "r.tif", coord_image(1, (H, W), "uint8"))
    nii = write_nifti(tmp_path / "v.nii", coord_image(1, (4, 5, 6), "int16")[0], ras())
    with pytest.raises(ConfigError, match="bands="):
        open_source(nii, bands=[1])
    with pytest.raises(ConfigError, match="volume="):
        open_source(tif, volume=0)
    with pytest.raises(ConfigError, match="volume="):
        open_source(tif, volumes_as_channels=True)


def test_bad_files_keep_their_reader_message(tmp_path: Path) -> None:
    cut = tmp_path / "cut.nii"
    cut.write_bytes(b"\x00" * 10)
    with pytest.raises(ReaderError, match="not a NIfTI"):
        open_source(cut)
    empty = tmp_path / "empty.tif"
    empty.touch()
    with pytest.raises(ReaderError, match="empty"):
        open_source(empty)


def test_source_kind() -> None:
    assert source_kind("x/y.TIF") == "raster" and source_kind("a.nii.gz") == "volume"
    assert source_kind("a.gz") is None and source_kind("a.png") is None


@pytest.mark.shared_data
def test_every_shared_file_opens(shared_data: Path, shared_file: Callable[[str], Path]) -> None:
    files = sorted(
        p for p in shared_data.rglob("*") if p.name.endswith((".tif", ".nii", ".nii.gz"))
    )
    assert files
    for path in files:
        src = open_source(shared_file(str(path.relative_to(shared_data))))
        assert isinstance(src, Source)
        assert src.kind == ("volume" if ".nii" in path.name else "raster")
