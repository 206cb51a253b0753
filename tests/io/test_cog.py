"""COG export: validity (rio-cogeo's validator), georeferencing read back exactly by
rasterio, colour table, class names, nodata, data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import Resampling as GdalResampling
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_validate

from segflow import segment
from segflow.errors import ConfigError, OutputError
from segflow.io.classes import ClassInfo, default_colors
from segflow.io.cog import display_colors, export_cog
from segflow.io.geotiff import GeoTiffSource
from segflow.io.source import VolumeGeometry
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.outputs.pyramid import downsample_labels
from tests.conftest import pixel_model, textured, write_tif

pytestmark = pytest.mark.filterwarnings(
    "ignore::rasterio.errors.NotGeoreferencedWarning",
    "ignore::segflow.io.geotiff.GeoreferencingWarning",
    "ignore:Use `@` matmul:PendingDeprecationWarning",
)

COLORS = [(0, 90, 200), (30, 160, 40), (230, 200, 60), (200, 30, 30)]


def labels_for(shape, num_classes=4, nodata=255, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    labels = ((rows // 37 + cols // 53) % num_classes).astype(
        np.uint8 if nodata == 255 else np.uint16
    )
    noise = rng.random(shape) < 0.02
    labels[noise] = rng.integers(0, num_classes, noise.sum())
    labels[:40, :60] = nodata
    return labels


def store_over(
    tmp_path: Path, image: Path, labels: np.ndarray, chunk=(256, 256), classes=None
) -> ZarrSink:
    """A finished store with the input's exact geometry, as the engine would write it."""
    geometry = GeoTiffSource(image).geometry
    classes = classes or [ClassInfo(name=f"class {i}", color=c) for i, c in enumerate(COLORS)]
    sink = ZarrSink.create(
        tmp_path / "out.zarr",
        OutputLayout(labels.shape, chunk, len(classes)),
        geometry,
        classes,
        {"input": {"path": str(image)}},
        "fp",
    )
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        sink.write_chunk(index, labels[region], None)
    sink.finalize({})
    return sink


def input_image(tmp_path: Path, shape, **kwargs) -> Path:
    return write_tif(tmp_path / "in.tif", np.zeros((1, *shape), np.uint8), **kwargs)


def assert_valid_cog(path: Path) -> None:
    valid, errors, warnings = cog_validate(path, quiet=True)
    assert valid and errors == [] and warnings == [], (errors, warnings)


def test_cog_is_valid_and_keeps_geometry_colours_names_and_data(tmp_path):
    transform = Affine(300.0379266750948, 0.0, 101985.0, 0.0, -300.041782729805, 2826915.0)
    image = input_image(tmp_path, (1100, 1300), transform=transform)
    labels = labels_for((1100, 1300))
    sink = store_over(tmp_path, image, labels, chunk=(300, 400))  # chunks not tile aligned
    out = export_cog(sink, tmp_path / "labels.tif")
    assert_valid_cog(out)
    with rasterio.open(image) as src, rasterio.open(out) as cog:
        assert cog.crs == src.crs and cog.crs.to_wkt() == src.crs.to_wkt()
        assert cog.transform == src.transform  # exact floats
        assert cog.profile["tiled"] and cog.block_shapes[0] == (512, 512)
        assert cog.overviews(1) == [2, 4]
        assert cog.nodata == 255 and cog.dtypes[0] == "uint8"
        np.testing.assert_array_equal(cog.read(1), labels)
        colormap = cog.colormap(1)
        for value, color in enumerate(COLORS):
            assert colormap[value] == (*color, 255)
        assert colormap[255][3] == 0  # nodata transparent
        assert cog.descriptions == ("class label",)
        assert cog.tags(1)["CLASS_2"] == "class 2"
        names = [c["name"] for c in json.loads(cog.tags()["SEGFLOW_CLASSES"])]
        assert names == [f"class {i}" for i in range(4)]
        assert cog.tags()["SEGFLOW_INPUT"] == str(image)
    # GDAL's mode overviews equal the store pyramid's levels (same tie rule, same cascade)
    expected = labels
    for level in (0, 1):
        expected = downsample_labels(expected, 2, 255, "mode")
        with rasterio.open(out, overview_level=level) as ovr:
            np.testing.assert_array_equal(ovr.read(1), expected)


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:4326", Affine(0.000269494585236, 0.0, -74.0042, 0.0, -0.000269494585236, 40.7549)),
        ("EPSG:32633", Affine(10.0, 2.5, 500000.0, 1.5, -10.0, 5000000.0)),  # rotated grid
        (None, None),  # pixel coordinates, no CRS
    ],
    ids=["geographic", "rotated", "no-crs"],
)
def test_georeferencing_round_trips_exactly(tmp_path, crs, transform):
    image = input_image(tmp_path, (600, 700), crs=crs, transform=transform)
    sink = store_over(tmp_path, image, labels_for((600, 700)))
    out = export_cog(sink, tmp_path / "labels.tif")
    assert_valid_cog(out)
    with rasterio.open(image) as src, rasterio.open(out) as cog:
        assert cog.crs == src.crs
        assert cog.transform == src.transform


def test_uint16_labels_above_255_classes(tmp_path):
    image = input_image(tmp_path, (300, 400))
    labels = labels_for((300, 400), num_classes=300, nodata=65535)
    labels[100:120, 100:120] = 299
    classes = [ClassInfo(name=f"organ {i}") for i in range(300)]  # no colours: default palette
    out = export_cog(store_over(tmp_path, image, labels, classes=classes), tmp_path / "l.tif")
    assert_valid_cog(out)
    with rasterio.open(out) as cog:
        assert cog.dtypes[0] == "uint16" and cog.nodata == 65535
        np.testing.assert_array_equal(cog.read(1), labels)
        assert cog.colormap(1)[299][:3] == default_colors(300)[299]


def test_display_colors_fall_back_to_the_palette_only_when_none_are_set():
    unset = [ClassInfo(name="a"), ClassInfo(name="b")]
    assert display_colors(unset) == default_colors(2)
    some = [ClassInfo(name="bg"), ClassInfo(name="b", color=(1, 2, 3))]
    assert display_colors(some) == [(0, 0, 0), (1, 2, 3)]


def test_engine_output_exports_to_a_valid_cog(tmp_path):
    image = write_tif(tmp_path / "in.tif", textured((700, 650), 3), nodata=0)
    model = pixel_model([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])
    segment(image, model, tmp_path / "o.zarr", device="cpu", patch_size=128, chunk_size=256)
    out = export_cog(tmp_path / "o.zarr", tmp_path / "o.tif", resampling="nearest")
    assert_valid_cog(out)
    with rasterio.open(image) as src, rasterio.open(out) as cog:
        assert (cog.crs, cog.transform, cog.shape) == (src.crs, src.transform, src.shape)


def test_refuses_volumes_incomplete_stores_and_existing_files(tmp_path):
    geometry = VolumeGeometry(
        affine=((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)),
        sform_code=1,
        qform_code=1,
        orientation=("R", "A", "S"),
        zooms=(1, 1, 1),
    )
    vol = ZarrSink.create(
        tmp_path / "v.zarr",
        OutputLayout((4, 4, 4), (4, 4, 4), 2),
        geometry,
        [ClassInfo(name="a"), ClassInfo(name="b")],
        {},
        "fp",
    )
    with pytest.raises(ConfigError, match="--to nifti"):
        export_cog(vol, tmp_path / "v.tif")
    image = input_image(tmp_path, (64, 64))
    raster = ZarrSink.create(
        tmp_path / "r.zarr",
        OutputLayout((64, 64), (32, 32), 2),
        GeoTiffSource(image).geometry,
        [ClassInfo(name="a"), ClassInfo(name="b")],
        {},
        "fp",
    )
    with pytest.raises(OutputError, match="not complete"):
        export_cog(raster, tmp_path / "r.tif")
    for index in np.ndindex(*raster.chunk_grid_shape):
        raster.write_chunk(index, np.zeros((32, 32), np.uint8), None)
    raster.finalize({})
    (tmp_path / "r.tif").write_bytes(b"")
    with pytest.raises(OutputError, match="--overwrite"):
        export_cog(raster, tmp_path / "r.tif")
    assert_valid_cog(export_cog(raster, tmp_path / "r.tif", overwrite=True))
    assert not list(tmp_path.glob("*.tmp.tif")) and not list(tmp_path.glob(".*.part"))


# --- the validator is strict enough to catch what matters ------------------------------------


def test_overviews_added_after_the_data_are_not_a_cog(tmp_path):
    path = tmp_path / "late.tif"
    profile = dict(
        driver="GTiff",
        width=1200,
        height=1000,
        count=1,
        dtype="uint8",
        tiled=True,
        blockxsize=256,
        blockysize=256,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels_for((1000, 1200))[None])
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4], GdalResampling.nearest)
    valid, errors, _ = cog_validate(path, quiet=True)
    assert not valid and any("offset" in e for e in errors), errors
    # the same pixels through GDAL's COG driver pass
    cog = tmp_path / "fixed.tif"
    rasterio.shutil.copy(path, cog, driver="COG")
    assert_valid_cog(cog)
    with rasterio.open(cog) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1) == [2, 4]


def test_epsg_code_survives(tmp_path):
    image = input_image(tmp_path, (200, 200), crs="EPSG:3035")
    out = export_cog(store_over(tmp_path, image, labels_for((200, 200))), tmp_path / "l.tif")
    with rasterio.open(out) as cog:
        assert cog.crs == CRS.from_epsg(3035) and cog.crs.to_epsg() == 3035
