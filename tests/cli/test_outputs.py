"""The output commands through Typer: export, inspect, stats, preview, pyramid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import typer
from PIL import Image
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from segflow import segment
from segflow.cli.outputs import default_output, register
from tests.conftest import pixel_model, textured, threshold_model, write_nifti, write_tif

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture(scope="module")
def raster_store(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("raster")
    image = write_tif(tmp / "scene.tif", textured((600, 700), 3), nodata=0)
    model = pixel_model([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])
    segment(image, model, tmp / "scene.zarr", device="cpu", patch_size=128, chunk_size=256)
    return image, tmp / "scene.zarr"


@pytest.fixture(scope="module")
def volume_store(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("volume")
    data = np.zeros((16, 14, 10), np.float32)
    data[4:10, 3:9, 2:7] = 9.0
    image = write_nifti(tmp / "scan.nii.gz", data, np.diag([-1.5, 1.5, 3.0, 1.0]))
    segment(image, threshold_model(1.0), tmp / "scan.zarr", device="cpu", patch_size=16)
    return image, tmp / "scan.zarr"


def test_export_cog_beside_the_store(app, raster_store):
    image, store = raster_store
    result = runner.invoke(app, ["export", str(store), "--to", "cog"])
    assert result.exit_code == 0, result.output
    target = default_output(store, "cog")  # type: ignore[arg-type]
    assert target.name == "scene_labels.tif" and f"wrote {target}" in result.output.replace(
        "\n", ""
    )
    assert cog_validate(target, quiet=True)[0]
    with rasterio.open(image) as src, rasterio.open(target) as cog:
        assert (cog.crs, cog.transform) == (src.crs, src.transform)
    again = runner.invoke(app, ["export", str(store), "--to", "cog"])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_export_nifti_with_sidecars(app, volume_store, tmp_path):
    image, store = volume_store
    target = tmp_path / "mask.nii.gz"
    result = runner.invoke(
        app, ["export", str(store), "--to", "nifti", "-o", str(target), "--reference", str(image)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mask.label_description.txt").is_file()
    mask, src = nib.load(target), nib.load(image)
    np.testing.assert_array_equal(mask.affine, src.affine)
    assert int(np.asarray(mask.dataobj).sum()) == 6 * 6 * 5


def test_export_ome_zarr_with_the_input_as_parent(app, volume_store):
    import zarr

    image, store = volume_store
    result = runner.invoke(app, ["export", str(store), "--to", "ome-zarr"])
    assert result.exit_code == 0, result.output
    target = store.with_name("scan_ome.zarr")
    root = zarr.open_group(target, mode="r")
    (ms,) = root.attrs["ome"]["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    # the file's first axis runs right to left: stored flipped, every scale positive
    assert root.attrs["segflow"]["axes_from_file"]["x"] == {"voxel_axis": 0, "flipped": True}
    labels = np.asarray(root["labels/labels/0"][...])
    assert int((labels == 1).sum()) == 6 * 6 * 5
    src = np.asarray(nib.load(image).dataobj)
    np.testing.assert_array_equal(np.asarray(root["0"][...]), src[::-1].transpose(2, 1, 0))


def test_export_png_and_preview(app, raster_store, tmp_path):
    _, store = raster_store
    png = tmp_path / "mask.png"
    assert runner.invoke(app, ["export", str(store), "--to", "png", "-o", str(png)]).exit_code == 0
    quick = tmp_path / "quick.png"
    result = runner.invoke(
        app, ["preview", str(store), "-o", str(quick), "--max-size", "500", "--bands", "3,2,1"]
    )
    assert result.exit_code == 0, result.output
    assert max(Image.open(quick).size) <= 500  # the input came from the store's provenance
    assert "no input" not in result.output


def test_wrong_export_kind_is_one_line_error(app, volume_store, tmp_path):
    _, store = volume_store
    result = runner.invoke(
        app, ["export", str(store), "--to", "cog", "-o", str(tmp_path / "x.tif")]
    )
    assert result.exit_code == 1
    assert "error:" in result.output and "--to nifti" in result.output
    assert "Traceback" not in result.output


def test_inspect_json_and_tables(app, raster_store, volume_store):
    image, store = raster_store
    result = runner.invoke(app, ["inspect", str(store), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["complete"] is True and info["chunks"]["done"] == info["chunks"]["total"]
    assert runner.invoke(app, ["inspect", str(image)]).exit_code == 0
    result = runner.invoke(app, ["inspect", str(volume_store[0])])
    assert result.exit_code == 0 and "RAS" not in result.output and "LAS" in result.output


def test_stats_writes_csv_and_json(app, volume_store, tmp_path):
    _, store = volume_store
    result = runner.invoke(
        app,
        ["stats", str(store), "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json")],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert int(rows[1]["voxels"]) == 180
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["classes"][1]["volume_ml"] == pytest.approx(180 * 1.5 * 1.5 * 3.0 / 1000)


def test_pyramid_command(app, raster_store):
    _, store = raster_store
    result = runner.invoke(app, ["pyramid", str(store), "--levels", "2"])
    assert result.exit_code == 0, result.output
    assert "level 2" in result.output
    assert runner.invoke(app, ["pyramid", str(store)]).exit_code == 1
    result = runner.invoke(app, ["pyramid", str(store), "--resampling", "mdoe", "--overwrite"])
    assert result.exit_code == 1 and "did you mean 'mode'" in result.output


@pytest.fixture(scope="module")
def uncertain_stores(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("uncertain")
    pixels = textured((200, 150), 3)
    pixels[:, :10, :20] = 0  # nodata
    image = write_tif(tmp / "scene.tif", pixels, nodata=0)
    model = pixel_model([[0.02, 0, 0], [0, 0.02, 0], [0, 0, 0.02]], [0, 0, 0])
    options = dict(device="cpu", patch_size=64, chunk_size=64, uncertainty=True)
    segment(image, model, tmp / "scene.zarr", **options)
    data = np.linspace(0, 10, 16 * 14 * 10, dtype=np.float32).reshape(16, 14, 10)
    volume = write_nifti(tmp / "scan.nii.gz", data, np.diag([-1.5, 1.5, 3.0, 1.0]))
    segment(volume, threshold_model(5.0), tmp / "scan.zarr", **{**options, "patch_size": 16})
    return tmp / "scene.zarr", tmp / "scan.zarr"


def test_inspect_shows_the_uncertainty(app, uncertain_stores, raster_store):
    scene, _ = uncertain_stores
    info = json.loads(runner.invoke(app, ["inspect", str(scene), "--json"]).output)
    assert info["uncertainty"]["array"] == "uncertainty" and info["uncertainty"]["nodata"] == 255
    assert "normalized entropy" in runner.invoke(app, ["inspect", str(scene)]).output
    plain = json.loads(runner.invoke(app, ["inspect", str(raster_store[1]), "--json"]).output)
    assert plain["uncertainty"] is None


def test_export_uncertainty_as_cog_and_nifti(app, uncertain_stores):
    from segflow.io.zarr_sink import ZarrSink

    scene, scan = uncertain_stores
    result = runner.invoke(app, ["export", str(scene), "--to", "cog", "--array", "uncertainty"])
    assert result.exit_code == 0, result.output
    target = scene.with_name("scene_uncertainty.tif")
    assert cog_validate(target, quiet=True)[0]
    stored = ZarrSink.open(scene).read_uncertainty()
    assert stored.min() > 0 and (stored == 255).any()  # uncertain pixels and nodata
    with rasterio.open(target) as cog:
        np.testing.assert_array_equal(cog.read(1), stored)
        assert cog.nodata == 255 and cog.scales == (1 / 254,) and cog.colorinterp
    assert not target.with_suffix(".qml").exists()  # no class styles for a quantity
    result = runner.invoke(app, ["export", str(scan), "--to", "nifti", "--array", "uncertainty"])
    assert result.exit_code == 0, result.output
    nifti = nib.load(scan.with_name("scan_uncertainty.nii.gz"))
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), ZarrSink.open(scan).read_uncertainty())
    assert nifti.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(nifti.affine, np.diag([-1.5, 1.5, 3.0, 1.0]))


def test_export_array_errors_are_one_line(app, uncertain_stores, raster_store):
    scene, _ = uncertain_stores
    wrong = runner.invoke(app, ["export", str(scene), "--to", "png", "--array", "uncertainty"])
    assert (
        wrong.exit_code == 1 and "--array uncertainty is for --to cog or --to nifti" in wrong.output
    )
    plain = runner.invoke(
        app,
        ["export", str(raster_store[1]), "--to", "cog", "--array", "uncertainty", "-o", "x.tif"],
    )
    assert plain.exit_code == 1 and "holds no uncertainty" in plain.output


def test_a_store_of_uncertainty_alone_exports_it(app, tmp_path):
    image = write_tif(tmp_path / "in.tif", textured((80, 60), 3))
    model = pixel_model([[0.02, 0, 0], [0, 0.02, 0], [0, 0, 0.02]], [0, 0, 0])
    store = tmp_path / "u.zarr"
    segment(image, model, store, device="cpu", patch_size=32, labels=False, uncertainty=True)
    result = runner.invoke(app, ["export", str(store), "--to", "cog", "--array", "uncertainty"])
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "u_uncertainty.tif") as cog:
        assert cog.read(1).max() <= 254
    labels = runner.invoke(app, ["export", str(store), "--to", "cog"])
    assert labels.exit_code == 1 and "holds no labels" in labels.output
