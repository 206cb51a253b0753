"""`segflow postprocess` and `segflow export --to gpkg|parquet|geojson` through Typer."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio.features
import typer
from typer.testing import CliRunner

from segflow.cli.outputs import default_output, register
from segflow.io.zarr_sink import ZarrSink
from tests.outputs.label_stores import blobs, specks, write_store

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_postprocess_then_polygons(app, tmp_path):
    labels = blobs((60, 70))
    store = write_store(tmp_path / "scene.zarr", labels, (16, 16)).path
    clean = tmp_path / "clean.zarr"
    args = ["postprocess", str(store), "-o", str(clean), "--keep-largest", "Forest,2"]
    options = ["--keep-top", "2", "--min-size", "0.5ha", "--connectivity", "face"]
    result = runner.invoke(app, [*args, *options])  # face: the connectivity of polygons
    assert result.exit_code == 0, result.output
    assert "forest:" in result.output and "removed" in result.output
    sink = ZarrSink.open_finished(clean)
    assert sink.attrs["postprocess"]["keep_largest"] == [1, 2]
    kept = sink.read_labels()
    assert (kept == 255).sum() == (labels == 255).sum()

    result = runner.invoke(app, ["export", str(clean), "--to", "gpkg"])
    assert result.exit_code == 0, result.output
    target = default_output(clean, "gpkg")  # type: ignore[arg-type]
    assert target.name == "clean_polygons.gpkg" and "polygons" in result.output
    frame = pyogrio.read_dataframe(target)
    assert (frame.class_id == 1).sum() == 2 and (frame.class_id == 2).sum() == 2
    assert frame.pixels.sum() == int((kept < 3).sum())


def test_unknown_class_is_one_line(app, tmp_path):
    store = write_store(tmp_path / "s.zarr", blobs((20, 20)), (16, 16)).path
    args = ["postprocess", str(store), "-o", str(tmp_path / "o.zarr"), "--keep-largest", "watr"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "did you mean 'water'" in result.output and "Traceback" not in result.output


def test_min_size_zero_is_one_line(app, tmp_path):
    store = write_store(tmp_path / "s.zarr", blobs((20, 20)), (16, 16)).path
    args = ["postprocess", str(store), "-o", str(tmp_path / "o.zarr"), "--min-size", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "greater than 0" in result.output


def test_export_parquet_and_geojson(app, tmp_path):
    store = write_store(tmp_path / "s.zarr", blobs((30, 30)), (16, 16)).path
    for fmt in ("parquet", "geojson"):
        out = tmp_path / f"p.{fmt}"
        result = runner.invoke(app, ["export", str(store), "--to", fmt, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert out.is_file()
    assert np.isclose(
        pyogrio.read_dataframe(tmp_path / "p.geojson").area_m2.sum(), 900 * (30 * 30 - 4)
    )


def test_sieve_then_polygons_with_min_area_and_simplify(app, tmp_path):
    labels = specks((60, 70), seed=2)
    store = write_store(tmp_path / "scene.zarr", labels, (16, 16)).path
    clean = tmp_path / "clean.zarr"
    args = ["postprocess", str(store), "-o", str(clean), "--sieve", "8", "--connectivity", "face"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "sieve:" in result.output and "merged" in result.output
    expected = rasterio.features.sieve(labels, 8, mask=labels != 255, connectivity=4)
    np.testing.assert_array_equal(ZarrSink.open_finished(clean).read_labels(), expected)

    out = tmp_path / "p.gpkg"
    options = ["--min-area", "0.9ha", "--simplify", "15"]  # 10 pixels of 900 m², half a pixel
    result = runner.invoke(app, ["export", str(clean), "--to", "gpkg", "-o", str(out), *options])
    assert result.exit_code == 0, result.output
    assert "below --min-area" in result.output
    frame = pyogrio.read_dataframe(out)
    assert (frame.pixels >= 10).all() and frame.geometry.is_valid.all()


def test_bad_sieve_and_min_area_are_one_line(app, tmp_path):
    store = write_store(tmp_path / "s.zarr", blobs((20, 20)), (16, 16)).path
    result = runner.invoke(
        app, ["postprocess", str(store), "-o", str(tmp_path / "o.zarr"), "--sieve", "0"]
    )
    assert result.exit_code == 1 and "--sieve must be greater than 0" in result.output
    result = runner.invoke(app, ["export", str(store), "--to", "gpkg", "--min-area", "big"])
    assert result.exit_code == 1 and "--min-area takes an area" in result.output
    assert "Traceback" not in result.output


def test_sieve_of_a_volume_in_millilitres(app, tmp_path):
    labels = blobs((10, 12, 14), scale=2)
    store = write_store(tmp_path / "ct.zarr", labels, (4, 8, 8)).path  # 0.8 x 0.8 x 2 mm
    result = runner.invoke(
        app, ["postprocess", str(store), "-o", str(tmp_path / "o.zarr"), "--sieve", "0.01mL"]
    )
    assert result.exit_code == 0, result.output
    assert "merged" in result.output
    sink = ZarrSink.open_finished(tmp_path / "o.zarr")
    assert sink.attrs["postprocess"]["sieve"] == {"value": 0.01, "unit": "ml"}
    assert (sink.read_labels() == 255).sum() == (labels == 255).sum()
