"""inspect: stores (geometry, classes, completion, pyramid, provenance) and inputs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rich.console import Console

from segflow.errors import OutputError, ReaderError
from segflow.io.source import RasterGeometry
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.models.meta import ClassInfo
from segflow.outputs.inspect import describe_store, inspect_path, render
from segflow.outputs.pyramid import build_pyramid
from tests.conftest import textured, write_nifti, write_tif

GEOMETRY = RasterGeometry(
    crs_wkt=CRS.from_epsg(32618).to_wkt(),
    transform=(30.0, 0.0, 300000.0, 0.0, -30.0, 4500000.0),
    georeferenced=True,
)
PROVENANCE = {"input": {"path": "/data/scene.tif"}, "model": {"arch": "unet", "sha256": "ab" * 32}}


def make_sink(tmp_path, chunks_written=None, zarr_format=3) -> ZarrSink:
    classes = [
        ClassInfo(name="water", color=(0, 0, 255)),
        ClassInfo(name="forest", color=(0, 128, 0)),
    ]
    sink = ZarrSink.create(
        tmp_path / "out.zarr",
        OutputLayout((300, 500), (128, 128), 2, zarr_format=zarr_format),
        GEOMETRY,
        classes,
        PROVENANCE,
        "fp-1",
    )
    indices = list(np.ndindex(*sink.chunk_grid_shape))
    for index in indices[: chunks_written if chunks_written is not None else len(indices)]:
        region = sink.chunk_region(index)
        sink.write_chunk(index, np.ones([s.stop - s.start for s in region], np.uint8), None)
    if chunks_written is None:
        sink.finalize({"seconds": 1.5})
    return sink


def test_incomplete_store_reports_its_progress(tmp_path):
    make_sink(tmp_path, chunks_written=5)
    info = inspect_path(tmp_path / "out.zarr")
    assert info["type"] == "store" and info["kind"] == "raster"
    assert info["complete"] is False
    assert info["chunks"] == {"done": 5, "total": 12, "grid": [3, 4], "fraction": 5 / 12}
    assert info["summary"] is None


def test_a_zarr_v2_store_is_described_as_a_store(tmp_path):
    make_sink(tmp_path, chunks_written=5, zarr_format=2)
    info = inspect_path(tmp_path / "out.zarr")
    assert info["type"] == "store" and info["zarr_format"] == 2
    assert info["chunks"]["done"] == 5


def test_complete_store_description(tmp_path):
    sink = make_sink(tmp_path)
    build_pyramid(sink, min_size=100)
    info = describe_store(tmp_path / "out.zarr")
    assert info["complete"] is True and info["chunks"]["done"] == 12
    assert [c["name"] for c in info["classes"]] == ["water", "forest"]
    assert info["labels"] == {"array": "labels", "dtype": "uint8", "nodata": 255}
    geometry = info["geometry"]
    assert geometry["epsg"] == 32618 and geometry["units"] == "metre"
    assert geometry["bounds"] == [300000.0, 4500000.0 - 300 * 30, 300000.0 + 500 * 30, 4500000.0]
    assert geometry["resolution"] == [30.0, 30.0]
    assert info["pyramid"][0] == {
        "level": 1,
        "path": "overviews/1/labels",
        "shape": [150, 250],
        "factor": [2, 2],
    }
    assert info["provenance"]["model"]["arch"] == "unet"
    assert info["summary"] == {"seconds": 1.5}
    json.dumps(info)  # JSON-ready as is


def test_raster_input_description(tmp_path):
    data = textured((70, 90), 4, dtype="uint16")
    path = write_tif(
        tmp_path / "in.tif",
        data,
        nodata=0,
        tile=None,
        transform=from_origin(500000.0, 4200000.0, 10.0, 10.0),
        crs="EPSG:32633",
    )
    info = inspect_path(path)
    assert info["type"] == "input" and info["kind"] == "raster"
    assert info["shape"] == [70, 90] and info["channels"] == 4 and info["dtype"] == "uint16"
    assert info["nodata"] == 0 and info["band_names"] == ["band_1", "band_2", "band_3", "band_4"]
    assert info["geometry"]["epsg"] == 32633 and info["geometry"]["rotated"] is False


def test_volume_input_description(tmp_path):
    affine = np.array([[-1.0, 0, 0, 90], [0, 0, 1.2, -100], [0, -2.0, 0, 80], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "t1.nii.gz", np.zeros((10, 12, 8), np.int16), affine)
    info = inspect_path(path)
    geometry = info["geometry"]
    assert info["kind"] == "volume" and info["dtype"] == "int16"
    assert geometry["orientation"] == "LIA" and geometry["oblique"] is False
    assert geometry["zooms_mm"] == pytest.approx([1.0, 2.0, 1.2])
    assert geometry["sform"] == "scanner" and geometry["qform_code"] == 1
    assert geometry["voxel_volume_mm3"] == pytest.approx(2.4)


def test_four_d_input_is_described_with_volumes_as_channels(tmp_path):
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 5, 3), np.float32), np.eye(4)), path)
    info = inspect_path(path)
    assert info["channels"] == 3 and "4-D" in info["note"]


def test_render_shows_the_essentials(tmp_path):
    make_sink(tmp_path, chunks_written=5)
    console = Console(record=True, width=120)
    render(inspect_path(tmp_path / "out.zarr"), console)
    text = console.export_text()
    assert "incomplete: 5 / 12 chunks" in text
    assert "EPSG:32618" in text and "forest" in text and "unet" in text
    volume = write_nifti(
        tmp_path / "v.nii.gz", np.zeros((4, 5, 6), np.uint8), np.diag([2.0, 2, 2, 1])
    )
    render(inspect_path(volume), console)
    assert "RAS" in console.export_text()


def test_errors_for_missing_and_foreign_paths(tmp_path):
    with pytest.raises(ReaderError):
        inspect_path(tmp_path / "missing.tif")
    (tmp_path / "plain.zarr").mkdir()
    (tmp_path / "plain.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(OutputError, match="not a segflow output"):
        inspect_path(tmp_path / "plain.zarr")


@pytest.mark.shared_data
def test_real_inputs(shared_data):
    scene = inspect_path(shared_data / "geo" / "landsat8_LC80200392015216LGN00_toa_b2-b7.tif")
    assert scene["band_names"][:3] == ["blue(B2)", "green(B3)", "red(B4)"]
    assert scene["nodata"] == "NaN" and scene["geometry"]["epsg"] == 32616
    anat = inspect_path(shared_data / "med" / "anatomical.nii")  # big-endian int16, 2 mm
    assert anat["dtype"] == "int16" and anat["geometry"]["orientation"] == "LAS"
    assert anat["geometry"]["zooms_mm"] == [2.0, 2.0, 2.0]
