"""Preview PNGs: size bounds, class colours in the picture, band choice, stretch, and
volume slices shown in radiological orientation whatever the file's voxel order."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
from PIL import Image

from segflow import segment
from segflow.errors import ConfigError
from segflow.io.cog import display_colors
from segflow.io.geotiff import GeoTiffSource
from segflow.io.nifti import NiftiSource
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.models.meta import ClassInfo
from segflow.outputs.preview import (
    LEGEND_WIDTH,
    PLANES,
    _centre_slice,
    _font,
    _legend_text,
    background_classes,
    choose_bands,
    decimated_labels,
    overlay,
    preview,
    stretch,
)
from segflow.outputs.pyramid import build_pyramid, open_level
from tests.conftest import pixel_model, textured, threshold_model, write_nifti, write_tif

COLORS = [(0, 90, 200), (30, 160, 40), (230, 200, 60), (200, 30, 30)]


def make_store(path: Path, labels: np.ndarray, geometry, classes, chunk) -> ZarrSink:
    sink = ZarrSink.create(
        path, OutputLayout(labels.shape, chunk, len(classes)), geometry, classes, {}, "fp"
    )
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        sink.write_chunk(index, labels[region], None)
    sink.finalize({})
    return sink


def png_colors(path: Path) -> set[tuple[int, int, int]]:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(np.uint32)
    packed = np.unique((pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2])
    return {(int(v >> 16), int(v >> 8 & 255), int(v & 255)) for v in packed}


# --- rasters ----------------------------------------------------------------------------------


@pytest.fixture
def raster_case(tmp_path):
    shape = (1500, 1100)
    image = write_tif(tmp_path / "in.tif", textured(shape, 3), nodata=0)
    rows = np.indices(shape)[0]
    labels = ((rows * 4 // shape[0]) % 4).astype(np.uint8)  # four horizontal bands
    labels[:100, :100] = 255
    classes = [ClassInfo(name=f"class {i}", color=c) for i, c in enumerate(COLORS)]
    sink = make_store(
        tmp_path / "out.zarr", labels, GeoTiffSource(image).geometry, classes, (256, 256)
    )
    return image, sink, labels


def test_raster_preview_is_bounded_and_shows_every_class_colour(tmp_path, raster_case):
    image, sink, _ = raster_case
    png = preview(sink, tmp_path / "p.png", input=image, max_size=600, alpha=1.0)
    width, height = Image.open(png).size
    assert width <= 600 and height <= 600
    colors = png_colors(png)
    assert all(c in colors for c in COLORS)
    # the scene itself (stretched input) shows through where the labels are nodata
    assert len(colors) > 50


def test_mask_only_preview_without_input(tmp_path, raster_case):
    _, sink, _ = raster_case
    png = preview(sink, tmp_path / "m.png", alpha=1.0)
    assert all(c in png_colors(png) for c in COLORS)


def test_labels_come_from_the_coarsest_sufficient_pyramid_level(raster_case):
    _, sink, labels = raster_case
    build_pyramid(sink, min_size=100)  # levels of 750, 375, 188, 94 rows
    sampled = decimated_labels(sink, (300, 220))
    level2 = open_level(sink, 2)[...]  # 375 x 275: the coarsest one >= 300 x 220
    rows = ((np.arange(300) + 0.5) * 375 / 300).astype(int)
    cols = ((np.arange(220) + 0.5) * 275 / 220).astype(int)
    np.testing.assert_array_equal(sampled, level2[np.ix_(rows, cols)])
    # and it agrees with sampling the full resolution labels almost everywhere
    full_rows = ((np.arange(300) + 0.5) * 1500 / 300).astype(int)
    full_cols = ((np.arange(220) + 0.5) * 1100 / 220).astype(int)
    assert (sampled == labels[np.ix_(full_rows, full_cols)]).mean() > 0.97


def test_input_that_does_not_match_the_store_is_refused(tmp_path, raster_case):
    _, sink, _ = raster_case
    other = write_tif(tmp_path / "other.tif", textured((200, 300), 3))
    with pytest.raises(ConfigError, match="pass the image the store was made from"):
        preview(sink, tmp_path / "x.png", input=other)


def test_band_choice(tmp_path):
    data = textured((40, 50), 6)
    path = write_tif(tmp_path / "six.tif", data, tile=None)
    with rasterio.open(path, "r+") as ds:
        for b, name in enumerate(["blue(B2)", "green(B3)", "red(B4)", "nir", "swir1", "swir2"], 1):
            ds.set_band_description(b, name)
    with rasterio.open(path) as ds:
        assert choose_bands(ds, None) == [3, 2, 1]
        assert choose_bands(ds, [4, 3, 2]) == [4, 3, 2]
        with pytest.raises(ConfigError, match="1 or 3 band numbers"):
            choose_bands(ds, [7, 1, 2])
    plain = write_tif(tmp_path / "plain.tif", data[:4], tile=None)
    with rasterio.open(plain) as ds:
        assert choose_bands(ds, None) == [1, 2, 3]
    one = write_tif(tmp_path / "one.tif", data[:1], tile=None)
    with rasterio.open(one) as ds:
        assert choose_bands(ds, None) == [1]


def test_stretch_clips_percentiles_and_blacks_out_nodata():
    band = np.linspace(0, 100, 101)[None].repeat(2, axis=0).astype(np.float64)
    band[1, :] = np.nan
    out = stretch(band[:, None, :])
    assert out[0, 0, 0] == 0 and out[0, 0, -1] == 255 and out[0, 0, 50] in (127, 128)
    assert not out[1].any()


def test_overlay_leaves_nodata_and_background_untinted():
    base = np.full((1, 4, 3), 100, np.uint8)
    labels = np.array([[0, 1, 2, 255]], np.uint8)
    out = overlay(base, labels, [(0, 0, 0), (255, 0, 0), (0, 0, 255)], 1.0, clear=[0])
    assert out[0].tolist() == [[100, 100, 100], [255, 0, 0], [0, 0, 255], [100, 100, 100]]
    assert background_classes([ClassInfo(name="Background"), ClassInfo(name="tree")], "raster") == [
        0
    ]
    assert background_classes([ClassInfo(name="water"), ClassInfo(name="tree")], "raster") == []
    assert background_classes([ClassInfo(name="a"), ClassInfo(name="b")], "volume") == [0]


# --- volumes ----------------------------------------------------------------------------------

# the same 1 mm world grid stored in four voxel orders (and one oblique grid)
RAS_SHAPE = (20, 16, 12)  # extent along x (R), y (A), z (S)


def centred(m: np.ndarray, shape) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = m
    affine[:3, 3] = -m @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def c_s(a: float) -> tuple[float, float]:
    return math.cos(a), math.sin(a)


GRIDS = {
    "RAS": (np.diag([1.0, 1.0, 1.0]), RAS_SHAPE),
    "LPS": (np.diag([-1.0, -1.0, 1.0]), RAS_SHAPE),
    "LIA": (np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]), (20, 12, 16)),
    "PSR": (np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, 1.0, 0]]), (16, 12, 20)),
}


def world_labels(affine: np.ndarray, shape) -> np.ndarray:
    """bit 0: patient right (x > 0), bit 1: anterior (y > 0), bit 2: superior (z > 0)."""
    ijk = np.indices(shape).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    bits = (xyz[0] > 0) * 1 + (xyz[1] > 0) * 2 + (xyz[2] > 0) * 4
    return bits.reshape(shape).astype(np.uint8)


def volume_case(tmp_path: Path, name: str, m: np.ndarray, shape) -> tuple[ZarrSink, Path]:
    affine = centred(m, shape)
    labels = world_labels(affine, shape)
    image = write_nifti(tmp_path / f"{name}.nii.gz", labels.astype(np.float32) * 10 + 5, affine)
    classes = [ClassInfo(name=f"bits {i:03b}") for i in range(8)]
    sink = make_store(
        tmp_path / f"{name}.zarr", labels, NiftiSource(image).geometry, classes, (8, 8, 8)
    )
    return sink, image


def displays(sink: ZarrSink, image: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    source = NiftiSource(image)
    out = {}
    for plane in PLANES:
        s = _centre_slice(sink, sink.geometry, source, plane)  # type: ignore[arg-type]
        out[s.name] = (s.labels, s.image)
    return out


def test_slices_look_the_same_whatever_the_voxel_order(tmp_path):
    shown = {
        name: displays(*volume_case(tmp_path, name, m, shape)) for name, (m, shape) in GRIDS.items()
    }
    for name in ("LPS", "LIA", "PSR"):
        for plane in ("axial", "coronal", "sagittal"):
            np.testing.assert_array_equal(
                shown[name][plane][0], shown["RAS"][plane][0], err_msg=f"{name} {plane}"
            )
            np.testing.assert_array_equal(shown[name][plane][1], shown["RAS"][plane][1])


def test_radiological_convention(tmp_path):
    shown = displays(*volume_case(tmp_path, "RAS", *GRIDS["RAS"]))

    def bit(plane: str, b: int) -> np.ndarray:
        return (shown[plane][0] >> b) & 1

    axial, coronal, sagittal = bit("axial", 0), bit("coronal", 0), bit("sagittal", 1)
    assert axial.shape == (16, 20) and coronal.shape == (12, 20) and sagittal.shape == (12, 16)
    # patient right on the image left (axial, coronal); anterior on the left (sagittal)
    for arr in (axial, coronal, sagittal):
        width = arr.shape[1]
        assert arr[:, : width // 2].all() and not arr[:, width // 2 :].any()
    # anterior at the top of the axial; superior at the top of coronal and sagittal
    for arr in (bit("axial", 1), bit("coronal", 2), bit("sagittal", 2)):
        height = arr.shape[0]
        assert arr[: height // 2].all() and not arr[height // 2 :].any()


def test_oblique_volume_is_shown_along_its_nearest_axes(tmp_path):
    c, s = c_s(0.2)
    m = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([-1.0, 1.0, 1.0])
    shown = displays(*volume_case(tmp_path, "obl", m, RAS_SHAPE))
    right = (shown["axial"][0] & 1).astype(float)
    assert right[:, :7].mean() > 0.9 and right[:, -7:].mean() < 0.1


def test_volume_preview_png(tmp_path):
    m, shape = GRIDS["LIA"]
    sink, image = volume_case(tmp_path, "LIA", m, shape)
    png = preview(sink, tmp_path / "v.png", input=image, max_size=700, alpha=1.0)
    width, height = Image.open(png).size
    assert width <= 700 and height <= 700
    colors = png_colors(png)
    shown = display_colors(sink.classes)
    assert sum(tuple(c) in colors for c in shown[1:]) >= 6  # label 0 is background: untinted


def test_volume_from_the_engine_with_a_mismatched_input(tmp_path):
    data = np.zeros((12, 10, 8), np.float32)
    data[3:8, 2:6, 2:5] = 5.0
    path = write_nifti(tmp_path / "a.nii.gz", data, np.diag([-2.0, 2.0, 3.0, 1.0]))
    segment(path, threshold_model(1.0), tmp_path / "a.zarr", device="cpu", patch_size=16)
    png = preview(tmp_path / "a.zarr", tmp_path / "a.png", input=path)
    assert Image.open(png).mode == "RGB"
    other = write_nifti(tmp_path / "b.nii.gz", np.zeros((9, 9, 9), np.float32), np.eye(4))
    with pytest.raises(ConfigError, match="voxel grid"):
        preview(tmp_path / "a.zarr", tmp_path / "b.png", input=other)


def test_engine_raster_preview(tmp_path):
    image = write_tif(tmp_path / "in.tif", textured((300, 400), 3), nodata=0)
    model = pixel_model([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])
    segment(image, model, tmp_path / "o.zarr", device="cpu", patch_size=128)
    png = preview(tmp_path / "o.zarr", tmp_path / "o.png", input=image, alpha=1.0)
    assert any(
        c in png_colors(png) for c in display_colors(ZarrSink.open(tmp_path / "o.zarr").classes)
    )


@pytest.mark.shared_data
def test_real_scene_and_scan(tmp_path, shared_data):
    scene = shared_data / "geo" / "rasterio_RGB.byte.tif"
    model = pixel_model([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])
    segment(scene, model, tmp_path / "rgb.zarr", device="cpu", patch_size=256)
    assert (
        Image.open(preview(tmp_path / "rgb.zarr", tmp_path / "rgb.png", input=scene)).size[0]
        <= 1024
    )
    scan, labels = (
        shared_data / "med" / "example_ct_sm.nii.gz",
        shared_data / "med" / "example_seg.nii.gz",
    )
    seg = np.asarray(nib.load(labels).dataobj).astype(np.uint8)
    classes = [ClassInfo(name=f"organ {i}") for i in range(int(seg.max()) + 1)]
    sink = make_store(tmp_path / "ct.zarr", seg, NiftiSource(scan).geometry, classes, (64, 64, 16))
    png = preview(sink, tmp_path / "ct.png", input=scan)
    assert max(Image.open(png).size) <= 1024


def test_legend_entries_wrap_instead_of_being_cut():
    from PIL import ImageDraw

    font = _font(13)
    long_name = "deciduous broadleaf forest with understorey shrubs"
    entries = [(0, "background"), (1, long_name), (None, "... and 3 more")]
    wrapped = _legend_text(entries, [0], font)
    assert " ".join(wrapped[0]) == "0  background  (not tinted)"  # once cut to "(not t..."
    assert " ".join(wrapped[1]) == f"1  {long_name}" and len(wrapped[1]) > 1
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    assert all(measure(line, font=font) <= LEGEND_WIDTH - 30 for lines in wrapped for line in lines)
    assert not any("…" in line for lines in wrapped for line in lines)
