"""The resolution training records: the inputs' own pixel size in the model's axes, a warning
or an error where they disagree, and the override a user gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from segflow.engine.resample import raster_pixel_size
from segflow.errors import ConfigError
from segflow.io.source import RasterGeometry
from segflow.train.resolution import training_resolution
from segflow.train.sampling import OpenPair, TrainPair, open_pair

from ..conftest import write_nifti, write_tif


def _raster(folder: Path, name: str, pixel: float | None, crs: str = "EPSG:32633") -> OpenPair:
    """A 32x48 GeoTIFF pair with ``pixel`` metres (or degrees) per pixel; None: no georeference."""
    image = np.random.default_rng(0).integers(0, 255, (2, 32, 48), dtype=np.uint8)
    mask = (image[:1] > 128).astype(np.uint8)
    geo: dict[str, object] = {"crs": None}
    if pixel is not None:
        geo = {"crs": crs, "transform": from_origin(10.0, 60.5, pixel, pixel)}
        if crs == "EPSG:32633":
            geo["transform"] = from_origin(500000.0, 6700000.0, pixel, pixel)
    write_tif(folder / f"{name}.tif", image, **geo)  # type: ignore[arg-type]
    write_tif(folder / f"{name}_mask.tif", mask, **geo)  # type: ignore[arg-type]
    return open_pair(TrainPair(folder / f"{name}.tif", folder / f"{name}_mask.tif"))


def _volume(
    folder: Path, name: str, affine: np.ndarray, orientation: str | None = "LPS"
) -> OpenPair:
    labels = np.zeros((20, 16, 12), dtype=np.uint8)
    labels[4:12, 4:10, 3:8] = 1
    write_nifti(folder / f"{name}.nii.gz", labels.astype(np.int16) * 100, affine)
    write_nifti(folder / f"{name}_label.nii.gz", labels, affine)
    pair = TrainPair(folder / f"{name}.nii.gz", folder / f"{name}_label.nii.gz")
    return open_pair(pair, orientation=orientation)


def test_a_projected_raster_records_its_pixel_size(tmp_path: Path) -> None:
    found = training_resolution([_raster(tmp_path, "a", 20.0)], model_dims=2)
    assert found.resolution == 20.0 and found.spacing is None and not found.warnings
    assert found.provenance == {
        "from": "training data", "inputs": 1, "smallest": [20.0, 20.0], "largest": [20.0, 20.0],
    }  # fmt: skip
    assert found.meta_fields() == {"spacing": None, "resolution": 20.0}


def test_a_geographic_raster_records_the_ground_size_at_its_centre(tmp_path: Path) -> None:
    pair = _raster(tmp_path, "geo", 0.0002, crs="EPSG:4326")
    found = training_resolution([pair], model_dims=2)
    geometry = pair.image.geometry
    assert isinstance(geometry, RasterGeometry)
    size = raster_pixel_size(geometry, (32, 48))  # the engine's helper, not a copy of it
    assert size is not None and size[1] < size[0]  # a degree of longitude is short at 60 N
    assert found.resolution == pytest.approx(np.sqrt(size[0] * size[1]), rel=1e-5)
    assert len(found.warnings) == 1 and "not square" in found.warnings[0]


def test_inputs_slightly_apart_warn_and_record_the_median(tmp_path: Path) -> None:
    pairs = [_raster(tmp_path, n, p) for n, p in (("a", 20.0), ("b", 21.0), ("c", 23.0))]
    found = training_resolution(pairs, model_dims=2)
    assert found.resolution == 21.0
    (warning,) = found.warnings
    assert "differ in pixel size" in warning and "20 m" in warning and "23 m" in warning
    assert found.provenance["smallest"] == [20.0, 20.0]
    assert found.provenance["largest"] == [23.0, 23.0]


def test_inputs_at_other_scales_are_one_line_unless_the_resolution_is_given(
    tmp_path: Path,
) -> None:
    pairs = [_raster(tmp_path, "s2", 10.0), _raster(tmp_path, "landsat", 30.0)]
    with pytest.raises(ConfigError, match="different scales") as error:
        training_resolution(pairs, model_dims=2)
    message = str(error.value)
    assert "\n" not in message and "landsat.tif" in message and "--resolution" in message
    found = training_resolution(pairs, model_dims=2, resolution=10.0)
    assert found.resolution == 10.0 and found.provenance["from"] == "given"
    (warning,) = found.warnings
    assert "recording the given resolution 10 m" in warning


def test_a_given_resolution_is_recorded_and_checked_against_the_data(tmp_path: Path) -> None:
    pair = _raster(tmp_path, "a", 20.0)
    same = training_resolution([pair], model_dims=2, resolution=20.05)
    assert same.resolution == 20.05 and not same.warnings
    other = training_resolution([pair], model_dims=2, resolution=40.0)
    assert other.resolution == 40.0 and "the training inputs are 20 m" in other.warnings[0]


def test_rasters_without_georeference_record_nothing_and_say_so(tmp_path: Path) -> None:
    bare = _raster(tmp_path, "bare", None)
    found = training_resolution([bare], model_dims=2)
    assert found.resolution is None and found.provenance == {"from": "none"}
    assert "--resolution" in found.warnings[0]
    mixed = training_resolution([bare, _raster(tmp_path, "a", 20.0)], model_dims=2)
    assert mixed.resolution == 20.0
    assert "1 training input(s) have no pixel size" in mixed.warnings[0]
    given = training_resolution([bare], model_dims=2, resolution=5.0)
    assert given.resolution == 5.0 and given.provenance == {"from": "given"}
    assert given.warnings == ()  # nothing to compare the given value with


def test_a_volume_records_its_voxel_spacing_in_model_axes(tmp_path: Path) -> None:
    lps = np.diag([-1.5, -1.5, 3.0, 1.0])
    found = training_resolution([_volume(tmp_path, "ct", lps)], model_dims=3)
    assert found.spacing == (1.5, 1.5, 3.0) and found.resolution is None and not found.warnings
    # the same world grid stored with its axes in another order: the model's axes are LPS
    sal = np.array([[0, 0, -1.5, 0], [0, -1.5, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    permuted = _volume(tmp_path, "sal", sal)
    assert permuted.transform is not None and permuted.transform.perm == (2, 1, 0)
    both = training_resolution([_volume(tmp_path, "ct", lps), permuted], model_dims=3)
    assert both.spacing == (1.5, 1.5, 3.0) and not both.warnings


def test_a_2d_model_on_slices_records_the_in_plane_spacing(tmp_path: Path) -> None:
    pair = _volume(tmp_path, "ct", np.diag([0.8, 0.7, 3.0, 1.0]), orientation=None)
    found = training_resolution([pair], model_dims=2, slice_axis=2)
    assert found.spacing == (0.8, 0.7)
    across = training_resolution([pair], model_dims=2, slice_axis=0)
    assert across.spacing == (0.7, 3.0)


def test_a_given_spacing_fills_every_axis_and_must_fit_the_model(tmp_path: Path) -> None:
    pair = _volume(tmp_path, "ct", np.diag([-1.5, -1.5, 3.0, 1.0]))
    assert training_resolution([pair], model_dims=3, spacing=(2.0,)).spacing == (2.0, 2.0, 2.0)
    assert training_resolution([pair], model_dims=3, spacing=(1.5, 1.5, 3.0)).warnings == ()
    with pytest.raises(ConfigError, match="needs 1 or 3 values"):
        training_resolution([pair], model_dims=3, spacing=(1.0, 2.0))


def test_an_override_of_the_wrong_kind_is_one_line(tmp_path: Path) -> None:
    volume = _volume(tmp_path, "ct", np.diag([-1.5, -1.5, 3.0, 1.0]))
    with pytest.raises(ConfigError, match="inputs are volumes; give their voxel spacing"):
        training_resolution([volume], model_dims=3, resolution=10.0)
    with pytest.raises(ConfigError, match="inputs are rasters; give their ground pixel size"):
        training_resolution([_raster(tmp_path, "a", 20.0)], model_dims=2, spacing=(1.0,))
