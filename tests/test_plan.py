"""The plan of a run: default region sizes, batch sizes, and the compatibility check."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pytest

from segflow.engine.execute import REGION_MEMORY_BYTES
from segflow.errors import ConfigError, ModelError
from segflow.io.source import Geometry, RasterGeometry, ReadResult, VolumeGeometry
from segflow.models.meta import ClassInfo, ModelMeta, Normalization
from segflow.options import RunOptions
from segflow.plan import (
    GPU_BATCH_SIZE,
    TASK_TARGET_2D,
    TASK_TARGET_3D,
    Fit,
    auto_batch_size,
    check_fit,
    default_region_size,
)


@pytest.mark.parametrize(
    ("dims", "classes", "probabilities", "edge"),
    [(2, 6, False, TASK_TARGET_2D), (3, 3, False, TASK_TARGET_3D), (3, 3, True, TASK_TARGET_3D)],
)
def test_default_regions_are_the_targets_for_few_classes(dims, classes, probabilities, edge):
    assert default_region_size(dims, classes, probabilities) == edge


@pytest.mark.parametrize(("dims", "classes"), [(3, 14), (3, 105), (2, 120)])
def test_default_regions_shrink_so_an_accumulator_fits_the_budget(dims, classes):
    edge = default_region_size(dims, classes, probabilities=True)
    target = TASK_TARGET_3D if dims == 3 else TASK_TARGET_2D
    assert edge < target
    assert 4 * (classes + 1) * edge**dims <= REGION_MEMORY_BYTES
    assert 4 * (classes + 1) * (edge + 1) ** dims > REGION_MEMORY_BYTES  # the largest that fits


def test_cpu_batches_keep_their_logits_small_and_gpus_get_full_batches():
    assert auto_batch_size("cpu", 6, (512, 512)) == 2  # 6 MB of logits per patch
    assert auto_batch_size("cpu", 2, (16, 16)) == GPU_BATCH_SIZE  # tiny patches: the cap
    # never one: a lone patch would be forwarded as a pair, twice the work per batch
    assert auto_batch_size("cpu", 3, (96, 96, 96)) == 2
    assert auto_batch_size("cpu", 100, (96, 96, 96)) == 2


# -- the compatibility check: one line per mismatch, errors where the result means nothing --


UTM_10M = RasterGeometry("EPSG:32633", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), True)
UINT8 = np.dtype("uint8")


@dataclass
class FakeSource:
    """Just what the check reads of a source; ``values`` is what any read returns."""

    kind: Literal["raster", "volume"] = "raster"
    spatial_shape: tuple[int, ...] = (64, 64)
    band_names: tuple[str, ...] = ("band_1", "band_2", "band_3")
    geometry: Geometry = UTM_10M
    dtype: np.dtype = UINT8
    values: float = 100.0
    path: Path = Path("in.tif")
    nodata: float | None = None
    block_shape: tuple[int, ...] = (64, 64)

    @property
    def channels(self) -> int:
        return len(self.band_names)

    def read(self, region: tuple[slice, ...]) -> ReadResult:
        shape = tuple(s.stop - s.start for s in region)
        data = np.full((self.channels, *shape), self.values, dtype=self.dtype)
        data.reshape(self.channels, -1)[:, ::20] = 0  # a few dark pixels
        return ReadResult(data, np.ones(shape, bool))

    def checksum(self) -> str:
        return ""


def meta_of(**fields: Any) -> ModelMeta:
    defaults: dict[str, Any] = dict(
        arch="pixel", in_channels=3, classes=(ClassInfo(name="a"), ClassInfo(name="b"))
    )
    return ModelMeta(**{**defaults, **fields})


def volume_geometry(affine: np.ndarray) -> VolumeGeometry:
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    codes = nib.aff2axcodes(affine)
    return VolumeGeometry(tuple(map(tuple, affine)), 1, 1, codes, zooms)  # type: ignore[arg-type]


RGB = ("red", "green", "blue")
BGRN = ("blue", "green", "red", "nir")


def fit(source: FakeSource, meta: ModelMeta, **options: Any) -> Fit:
    return check_fit(source, meta, RunOptions(**options))  # type: ignore[arg-type]


def test_missing_bands_are_named_with_the_fix():
    with pytest.raises(ModelError) as error:
        fit(FakeSource(band_names=RGB), meta_of(in_channels=4, band_names=BGRN))
    assert str(error.value) == (
        "in.tif has 3 channel(s) but the model expects 4 (blue, green, red, nir; missing nir); "
        "--bands cannot add bands: use an input with 4 bands or a model made for 3"
    )


@pytest.mark.parametrize(
    ("channels", "hint"),
    [
        (
            1,
            "model expects 3; --bands cannot add bands: use an input with 3 bands or a model made for 1",
        ),
        (5, "model expects 3; select 3 of its bands with --bands, e.g. --bands 1,2,3"),
    ],
)
def test_the_band_hint_fits_the_file(channels, hint):
    with pytest.raises(ModelError, match=re.escape(hint) + "$"):
        names = tuple(f"band_{b}" for b in range(1, channels + 1))
        fit(FakeSource(band_names=names), meta_of(in_channels=3))


def test_extra_bands_say_which_to_select():
    source = FakeSource(band_names=("nir", "red", "green", "blue", "swir"))
    with pytest.raises(ModelError, match=r"missing none\); select them with --bands 4,3,2,1$"):
        fit(source, meta_of(in_channels=4, band_names=BGRN))


def test_bands_in_another_order_are_a_warning_with_the_bands_to_pass():
    found = fit(FakeSource(band_names=RGB), meta_of(band_names=("blue", "green", "red")))
    assert found.warnings == (
        "in.tif has bands red, green, blue but the model expects blue, green, red; "
        "reorder with --bands 3,2,1",
    )
    # with bands already selected, the fix names the file's band numbers
    chosen = fit(
        FakeSource(band_names=RGB), meta_of(band_names=("blue", "green", "red")), bands=(5, 6, 7)
    )
    assert chosen.warnings[0].endswith("--bands 7,6,5")


def test_other_band_names_are_a_warning_and_unnamed_bands_are_not_checked():
    found = fit(FakeSource(band_names=("b1", "b2", "red")), meta_of(band_names=RGB))
    assert found.warnings == (
        "in.tif has bands b1, b2, red but the model expects red, green, blue "
        "(missing green, blue); check the band order",
    )
    assert fit(FakeSource(), meta_of(band_names=RGB)).warnings == ()


def test_a_3d_model_on_a_raster_is_an_error():
    with pytest.raises(ModelError, match=r"the model is 3-D but in\.tif is a 2-D raster"):
        fit(FakeSource(), meta_of(spatial_dims=3))


def test_another_resolution_says_resampling_happens_and_by_how_much():
    found = fit(FakeSource(), meta_of(resolution=20.0))
    assert found.model_space is not None and found.model_space.model_shape == (32, 32)
    assert found.warnings == (
        "resampling in.tif from 10 x 10 m to the model's 20 x 20 m (scale 0.5 x 0.5; "
        "model grid 32x32)",
    )
    off = fit(FakeSource(), meta_of(resolution=20.0), resample=False)
    assert off.model_space is None
    assert off.warnings == (
        "in.tif has a spacing of 10 x 10 m but the model was trained at 20 x 20 m; "
        "with --no-resample it sees the input's own pixels",
    )
    assert fit(FakeSource(), meta_of(resolution=10.05)).model_space is None  # within tolerance


def test_a_spacing_far_off_is_an_error_about_units():
    with pytest.raises(ModelError) as error:
        fit(FakeSource(), meta_of(resolution=0.3))
    assert str(error.value) == (
        "in.tif has a spacing of 10 x 10 m but the model was trained at 0.3 x 0.3 m "
        "(scale 33.3 x 33.3); check the units, or pass --resolution or --no-resample"
    )


def test_a_raster_without_pixel_size_is_not_resampled():
    plain = RasterGeometry(None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), False)
    found = fit(FakeSource(geometry=plain), meta_of(resolution=2.0))
    assert found.model_space is None
    assert found.warnings == (
        "in.tif has no pixel size (not georeferenced), so it is not resampled to the "
        "model's 2 x 2 m",
    )


def test_values_far_outside_the_expected_range_are_an_error():
    meta = meta_of(band_names=RGB, value_range=((0.0, 1.0),) * 3)
    with pytest.raises(ModelError) as error:
        fit(FakeSource(values=128.0), meta)
    assert str(error.value) == (
        "band red of in.tif (uint8) has values around 128 but the model expects 0..1; "
        "convert the input to the model's units"
    )
    # the normalization's scale brings 8-bit values to 0..1: then they fit
    scaled = meta_of(
        band_names=RGB,
        value_range=((0.0, 1.0),) * 3,
        normalization=Normalization(mean=(0.5,) * 3, std=(0.2,) * 3, scale=(1 / 255,) * 3),
    )
    assert fit(FakeSource(values=128.0), scaled).warnings == ()


def test_values_partly_outside_the_range_are_a_warning():
    ct = meta_of(in_channels=1, value_range=((-1024.0, 100.0),))
    found = fit(FakeSource(band_names=("band_1",), values=300.0, dtype=np.dtype("int16")), ct)
    assert found.warnings == (
        "95% of the sampled values of channel 1 of in.tif lie outside the model's -1024..100",
    )


def test_volume_spacing_is_given_in_the_models_axis_order():
    # file axes i, j, k point S, R, A; the model wants RAS at 1 x 2 x 3 mm
    affine = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    source = FakeSource(
        kind="volume",
        spatial_shape=(30, 40, 50),
        band_names=("volume_0",),
        geometry=volume_geometry(affine),
        path=Path("ct.nii.gz"),
    )
    meta = meta_of(in_channels=1, spatial_dims=3, spacing=(1.0, 2.0, 3.0), orientation="RAS")
    found = fit(source, meta)
    assert found.model_space is not None
    assert found.model_space.model_spacing == (3.0, 1.0, 2.0)  # S, R, A: the file's axes
    assert found.model_space.model_shape == (10, 40, 25)
    unturned = fit(source, meta, reorient=False)
    assert unturned.warnings[-1] == (
        "the model expects RAS volumes but ct.nii.gz is SRA and --no-reorient is set; "
        "drop --no-reorient"
    )
    with pytest.raises(ConfigError, match="spacing needs 1 or 3 values, got 2"):
        fit(source, meta, spacing=(1.0, 2.0))


def test_a_2d_model_on_a_volume_keeps_the_spacing_along_its_slices():
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    source = FakeSource(
        kind="volume",
        spatial_shape=(100, 100, 20),
        band_names=("volume_0",),
        geometry=volume_geometry(affine),
    )
    found = fit(source, meta_of(in_channels=1, spacing=(1.0, 1.0)))
    assert found.squeeze_axis == 2
    assert found.model_space is not None and found.model_space.model_shape == (50, 50, 20)
