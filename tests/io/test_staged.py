"""Exports to object storage (written locally, put whole) and from a store in it.

Against the loopback S3 server (moto, credentials enforced): every export format read
from an ``s3://`` store and written to an ``s3://`` object equals the same export of
the local store; NIfTI sidecars land beside the mask; a missing bucket is one line.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import nibabel as nib
import numpy as np
import pytest
import s3fs
import typer
from PIL import Image
from typer.testing import CliRunner

from segflow import segment
from segflow.cli.outputs import register
from tests.conftest import pixel_model, textured, threshold_model, write_nifti, write_tif
from tests.io.s3server import S3Server

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _fs(server: S3Server) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        key=server.key_id, secret=server.secret, endpoint_url=server.url, skip_instance_cache=True
    )


def _raster_stores(tmp_path: Path, bucket: str) -> tuple[Path, str]:
    image = write_tif(tmp_path / "scene.tif", textured((150, 170), 3), nodata=0)
    model = pixel_model([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])
    options = {"device": "cpu", "patch_size": 64, "chunk_size": 64}
    local, remote = tmp_path / "scene.zarr", f"s3://{bucket}/maps/scene.zarr"
    assert segment(image, model, local, **options).status == "complete"
    assert segment(image, model, remote, **options).status == "complete"
    return local, remote


def _export(app: typer.Typer, *args: str) -> str:
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("fmt", ["gpkg", "parquet", "geojson"])
def test_polygons_from_and_to_s3_equal_the_local_export(app, tmp_path, s3, fmt):
    bucket = s3.new_bucket()
    local, remote = _raster_stores(tmp_path, bucket)
    expected = tmp_path / f"local.{fmt}"
    _export(app, str(local), "--to", fmt, "-o", str(expected), "--min-area", "4px")
    output = _export(app, remote, "--to", fmt, "--min-area", "4px")
    uri = f"s3://{bucket}/maps/scene_polygons.{fmt}"  # the default: beside the store
    assert f"wrote {uri}" in output.replace("\n", "")
    back = tmp_path / f"back.{fmt}"
    _fs(s3).get_file(uri, str(back))
    read = gpd.read_parquet if fmt == "parquet" else gpd.read_file
    a, b = read(expected), read(back)
    assert len(a) > 0 and a.crs == b.crs
    assert list(a["class_id"]) == list(b["class_id"]) and list(a["pixels"]) == list(b["pixels"])
    assert all(x.equals_exact(y, 0) for x, y in zip(a.geometry, b.geometry, strict=True))


def test_png_from_s3_equals_the_local_one(app, tmp_path, s3):
    bucket = s3.new_bucket()
    local, remote = _raster_stores(tmp_path, bucket)
    _export(app, str(local), "--to", "png", "-o", str(tmp_path / "local.png"))
    uri = f"s3://{bucket}/quick/scene.png"
    _export(app, remote, "--to", "png", "-o", uri)
    _fs(s3).get_file(uri, str(tmp_path / "back.png"))
    a, b = Image.open(tmp_path / "local.png"), Image.open(tmp_path / "back.png")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nifti_to_s3_with_its_sidecars(app, tmp_path, s3):
    bucket = s3.new_bucket()
    data = np.zeros((16, 14, 10), np.float32)
    data[4:10, 3:9, 2:7] = 9.0
    image = write_nifti(tmp_path / "scan.nii.gz", data, np.diag([-1.5, 1.5, 3.0, 1.0]))
    remote = f"s3://{bucket}/scan.zarr"
    assert segment(image, threshold_model(1.0), remote, device="cpu", patch_size=16).status == (
        "complete"
    )
    _export(app, remote, "--to", "nifti", "-o", str(tmp_path / "local.nii.gz"))
    uri = f"s3://{bucket}/masks/scan.nii.gz"
    output = _export(app, remote, "--to", "nifti", "-o", uri, "--reference", str(image))
    fs = _fs(s3)
    found = sorted(Path(k).name for k in fs.find(f"{bucket}/masks"))
    local_names = sorted(p.name for p in tmp_path.glob("local.*"))
    assert found == sorted(n.replace("local", "scan") for n in local_names)
    assert all(f"s3://{bucket}/masks/{name}" in output.replace("\n", "") for name in found)
    fs.get_file(uri, str(tmp_path / "back.nii.gz"))
    mask, src = nib.load(tmp_path / "back.nii.gz"), nib.load(image)
    np.testing.assert_array_equal(mask.affine, src.affine)
    np.testing.assert_array_equal(
        np.asarray(mask.dataobj), np.asarray(nib.load(tmp_path / "local.nii.gz").dataobj)
    )
    again = runner.invoke(app, ["export", remote, "--to", "nifti", "-o", uri])
    assert again.exit_code == 1 and "--overwrite" in again.output


@pytest.mark.parametrize("where", ["store", "output"])
def test_a_missing_bucket_is_one_line(app, tmp_path, s3, where):
    bucket = s3.new_bucket()
    local, _ = _raster_stores(tmp_path, bucket)
    store, output = str(local), "s3://no-such-bucket-segflow/x.gpkg"
    if where == "store":
        store, output = "s3://no-such-bucket-segflow/scene.zarr", str(tmp_path / "x.gpkg")
    result = runner.invoke(app, ["export", store, "--to", "gpkg", "-o", output])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no-such-bucket-segflow" in lines[0], result.output
    assert s3.secret not in result.output
    assert not (tmp_path / "x.gpkg").exists()


def test_dicom_seg_stays_local(app, tmp_path, s3):
    result = runner.invoke(
        app, ["export", "s3://b/ct.zarr", "--to", "dicom-seg", "-o", str(tmp_path / "s.dcm")]
    )
    assert result.exit_code == 1 and "local" in result.output
