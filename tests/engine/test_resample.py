"""Resampling to the model's spacing: the math, a scale-dependent model, chunk invariance."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from rasterio.transform import from_origin
from scipy import ndimage
from torch import nn

from segflow import segment
from segflow.engine.resample import (
    ModelSpace,
    device_table,
    lerp_table,
    model_space,
    raster_pixel_size,
    validity_windows,
)
from segflow.io.source import RasterGeometry
from segflow.io.zarr_sink import ZarrSink
from segflow.models import LoadedModel
from segflow.models.meta import ClassInfo, ModelMeta
from tests.conftest import pixel_model, save, threshold_model, write_nifti, write_tif

THRESHOLD = 0.0
UTM_METRE = from_origin(500000.0, 4e6, 1.0, 1.0)  # 1 m pixels


class MeanThreshold(nn.Module):
    """A 3^d mean, then class 1 where it exceeds THRESHOLD: its answer depends on the scale."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        pool = nn.AvgPool3d if spatial_dims == 3 else nn.AvgPool2d
        self.mean = pool(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean(x)
        return torch.cat([torch.zeros_like(mean), 4.0 * (mean - THRESHOLD)], dim=1)


def mean_model(spatial_dims: int, **resolution: object) -> LoadedModel:
    meta = ModelMeta(
        arch="mean-threshold",
        spatial_dims=spatial_dims,  # type: ignore[arg-type]
        in_channels=1,
        output_stride=1,
        classes=(ClassInfo(name="low"), ClassInfo(name="high")),
        **resolution,  # type: ignore[arg-type]
    )
    module = MeanThreshold(spatial_dims).eval()
    return LoadedModel(meta=meta, module=module, sha256="mean", path=None, runtime="torch")


def striped(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth structure plus stripes one voxel wide: a 2-voxel average removes the stripes."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 4.0)
    smooth = (smooth - smooth.mean()) / smooth.std()
    stripes = np.where(np.arange(shape[-1]) % 2 == 0, 1.0, -1.0)
    return (smooth + 1.5 * stripes).astype(np.float32)


def reference_labels(image: np.ndarray, factor: float) -> np.ndarray:
    """Resample to the model's spacing, apply the model, resample the scores back, argmax."""
    zoom = dict(order=1, mode="nearest", grid_mode=True)
    coarse = ndimage.zoom(image.astype(np.float64), factor, **zoom)
    mean = ndimage.uniform_filter(coarse, size=3, mode="nearest")
    high = 1.0 / (1.0 + np.exp(-4.0 * (mean - THRESHOLD)))  # softmax of (0, 4 (m - t))
    back = ndimage.zoom(high, [n / c for n, c in zip(image.shape, high.shape)], **zoom)
    assert back.shape == image.shape
    return (back > 0.5).astype(np.uint8)


def store_labels(store: Path) -> np.ndarray:
    sink = ZarrSink.open(store)
    return np.asarray(zarr.open_group(store, mode="r")[sink.labels_path][...])


def quietly(*args: object, **kwargs: object) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return segment(*args, **kwargs)  # type: ignore[arg-type]


# -- the math ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n_src", "n_dst"), [(40, 20), (37, 15), (10, 23), (5, 1), (1, 4)])
def test_tables_interpolate_as_torch_does(n_src, n_dst):
    values = torch.linspace(-3, 5, n_src, dtype=torch.float64).square()[None, None]
    expected = F.interpolate(values, size=n_dst, mode="linear", align_corners=False)[0, 0]
    lo, hi, w = lerp_table(n_src, n_dst)
    v = values[0, 0].numpy()
    got = v[lo] + (v[hi] - v[lo]) * w
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_a_window_resamples_to_exactly_its_part_of_the_whole():
    space = ModelSpace((30, 41), (15, 61), (1.0, 1.0), (2.0, 0.67))
    image = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 30, 41)).astype(np.float32))
    whole = space.to_model(image, (0, 0), (slice(0, 15), slice(0, 61)))
    box = (slice(4, 11), slice(20, 37))
    support = space.input_support(box)
    window = image[(slice(None), *support)]
    part = space.to_model(window, tuple(s.start for s in support), box)
    assert torch.equal(part, whole[(slice(None), *box)])
    region = (slice(7, 19), slice(3, 29))
    grid_box = space.grid_region(region)
    scores = whole[(slice(None), *grid_box)]
    back = space.to_input(scores, tuple(s.start for s in grid_box), region)
    full = space.to_input(whole, (0, 0), (slice(0, 30), slice(0, 41)))
    assert torch.equal(back, full[(slice(None), *region)])


@pytest.mark.parametrize(("n", "m"), [(30, 15), (31, 10), (12, 29), (9, 9 * 3)])
def test_a_model_sample_is_valid_where_a_valid_voxel_reads_it(n, m):
    rng = np.random.default_rng(n + m)
    valid = rng.random((n, n + 3)) < 0.05
    space = ModelSpace((n, n + 3), (m, m), (1.0, 1.0), (n / m, (n + 3) / m))
    region = space.read_region((slice(0, m), slice(0, m)))
    got = space.grid_validity(valid[region], (0, 0), (slice(0, m), slice(0, m)))
    reads = [lerp_table(m, size)[:2] for size in (n, n + 3)]
    expected = np.zeros((m, m), bool)
    for i, j in zip(*np.nonzero(valid), strict=True):
        for a in (reads[0][0][i], reads[0][1][i]):
            for b in (reads[1][0][j], reads[1][1][j]):
                expected[a, b] = True
    np.testing.assert_array_equal(got, expected)
    start, stop = validity_windows(n, m)
    assert (stop >= start).all()


def test_spacings_within_the_tolerance_need_no_model_grid():
    assert model_space((100, 100), (1.0, 1.0), (1.005, 0.995)) is None
    space = model_space((100, 100, 40), (1.0, 1.0, 3.0), (1.5, 1.5, 3.0))
    assert space is not None and space.model_shape == (67, 67, 40)
    assert space.resampled_axes == (0, 1)


def test_geographic_pixels_are_measured_on_the_ground():
    wkt = 'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]]]'
    degree = 1 / 3600  # one arc second
    geometry = RasterGeometry(wkt, (degree, 0.0, 10.0, 0.0, -degree, 61.0), True)
    size = raster_pixel_size(geometry, (7200, 3600))  # two degrees high: centred on 60 N
    assert size is not None
    assert size[0] == pytest.approx(30.92, rel=0.001)  # a second of latitude
    assert size[1] == pytest.approx(30.92 * 0.5, rel=0.001)  # of longitude at 60 degrees


# -- a scale-dependent model at 2 mm on a 1 mm volume ----------------------------------------


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    image = striped((48, 44, 40))
    affine = np.array([[0.0, 0.0, -1.0, 90.0], [1.0, 0.0, 0.0, -40.0], [0.0, -1.0, 0.0, 30.0]])
    affine = np.vstack([affine, [0, 0, 0, 1]])  # 1 mm, LIA-like axes
    path = write_nifti(tmp_path_factory.mktemp("vol") / "in.nii.gz", image, affine)
    return path, image, affine


def test_a_2mm_model_on_a_1mm_volume_matches_the_reference(volume, tmp_path):
    path, image, affine = volume
    model = mean_model(3, spacing=(2.0, 2.0, 2.0))
    options = dict(patch_size=16, chunk_size=16, device="cpu")
    with pytest.warns(UserWarning, match="resampling .* to the model's 2 x 2 x 2 mm"):
        segment(path, model, tmp_path / "on.zarr", **options)
    quietly(path, model, tmp_path / "off.zarr", resample=False, **options)

    sink = ZarrSink.open(tmp_path / "on.zarr")
    assert np.allclose(np.asarray(sink.geometry.affine), affine)  # the input's exact geometry
    resampled, plain = store_labels(tmp_path / "on.zarr"), store_labels(tmp_path / "off.zarr")
    assert resampled.shape == image.shape
    expected = reference_labels(image, 0.5)
    agreement = float(np.mean(resampled == expected))
    without = float(np.mean(plain == expected))
    assert agreement >= 0.97
    assert agreement - without > 0.1  # the stripes fool the model at the input's own spacing
    recorded = sink.attrs
    assert recorded["resampling"]["model_grid"] == [24, 22, 20]
    assert "resampling" in recorded["warnings"][0]


def test_a_raster_model_at_twice_the_pixel_size_matches_the_reference(tmp_path):
    image = striped((120, 100), seed=3)
    path = write_tif(tmp_path / "in.tif", image[None], transform=UTM_METRE, tile=None)
    model = mean_model(2, resolution=2.0)
    options = dict(patch_size=32, chunk_size=48, device="cpu")
    quietly(path, model, tmp_path / "on.zarr", **options)
    quietly(path, model, tmp_path / "off.zarr", resample=False, **options)
    resampled, plain = store_labels(tmp_path / "on.zarr"), store_labels(tmp_path / "off.zarr")
    assert resampled.shape == image.shape
    expected = reference_labels(image, 0.5)
    agreement = float(np.mean(resampled == expected))
    assert agreement >= 0.97
    assert agreement - float(np.mean(plain == expected)) > 0.1
    sink = ZarrSink.open(tmp_path / "on.zarr")
    assert sink.geometry.transform == tuple(UTM_METRE)[:6]


def test_the_resolution_option_overrides_the_model(tmp_path):
    image = striped((64, 64), seed=4)
    path = write_tif(tmp_path / "in.tif", image[None], transform=UTM_METRE, tile=None)
    options = dict(patch_size=32, device="cpu")
    with pytest.warns(UserWarning, match="from 1 x 1 m to the model's 2 x 2 m"):
        segment(path, mean_model(2), tmp_path / "set.zarr", resolution=2.0, **options)
    quietly(path, mean_model(2, resolution=2.0), tmp_path / "meta.zarr", **options)
    np.testing.assert_array_equal(
        store_labels(tmp_path / "set.zarr"), store_labels(tmp_path / "meta.zarr")
    )


# -- chunk invariance with resampling on ------------------------------------------------------


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (0.75, 1.6, 3.0)])
def test_resampled_outputs_are_bit_identical_across_chunks_regions_and_schedulers(
    volume, tmp_path, spacing
):
    path = volume[0]
    model = mean_model(3, spacing=spacing)
    runs = [
        dict(chunk_size=8, region_size=8),
        dict(chunk_size=(12, 16, 20), region_size=24),
        dict(chunk_size=32, scheduler="sync"),
    ]
    stores = []
    for n, run in enumerate(runs):
        store = tmp_path / f"run{n}.zarr"
        quietly(path, model, store, patch_size=16, device="cpu", probabilities="float16", **run)
        stores.append(store)
    first = zarr.open_group(stores[0], mode="r")
    for store in stores[1:]:
        group = zarr.open_group(store, mode="r")
        np.testing.assert_array_equal(group["0"][...], first["0"][...])
        np.testing.assert_array_equal(group["probabilities/0"][...], first["probabilities/0"][...])


def test_nodata_stays_nodata_and_valid_voxels_get_labels(tmp_path):
    image = striped((40, 36), seed=5)
    image[:, :9] = np.nan
    image[30:, 20:] = np.nan
    path = write_tif(tmp_path / "in.tif", image[None], transform=UTM_METRE, tile=None)
    quietly(path, mean_model(2, resolution=3.0), tmp_path / "o.zarr", patch_size=8, device="cpu")
    labels = store_labels(tmp_path / "o.zarr")
    nodata = ~np.isfinite(image)
    assert (labels[nodata] == 255).all()
    assert (labels[~nodata] <= 1).all()


@pytest.mark.slow
def test_a_local_cluster_gives_the_threaded_answer_when_resampling(volume, tmp_path):
    path = volume[0]
    loaded = threshold_model(0.2)
    meta = ModelMeta.model_validate({**loaded.meta.model_dump(), "spacing": (1.5, 2.0, 2.5)})
    model_file = save(
        LoadedModel(meta, loaded.module, "t", None, "torch"), tmp_path / "m.safetensors"
    )
    options = dict(patch_size=16, chunk_size=16, region_size=16, device="cpu")
    quietly(path, model_file, tmp_path / "threads.zarr", **options)
    quietly(path, model_file, tmp_path / "local.zarr", scheduler="local", workers=2, **options)
    np.testing.assert_array_equal(
        store_labels(tmp_path / "local.zarr"), store_labels(tmp_path / "threads.zarr")
    )


def test_a_sigmoid_model_resamples_like_its_two_class_softmax_twin(tmp_path):
    image = striped((50, 42), seed=6)
    path = write_tif(tmp_path / "in.tif", image[None], transform=UTM_METRE, tile=None)
    options = dict(patch_size=16, device="cpu", resolution=1.7)
    sigmoid = pixel_model([[1.0]], [-0.2])  # one channel: class 1 where x > 0.2
    softmax = pixel_model([[0.0], [1.0]], [0.0, -0.2])
    quietly(path, sigmoid, tmp_path / "one.zarr", **options)
    quietly(path, softmax, tmp_path / "two.zarr", **options)
    one, two = store_labels(tmp_path / "one.zarr"), store_labels(tmp_path / "two.zarr")
    assert 0.2 < one.mean() < 0.8
    np.testing.assert_array_equal(one, two)


def test_model_files_carry_the_resolution_and_the_command_shows_it(tmp_path):
    from typer.testing import CliRunner

    from segflow.cli.model import model_app
    from segflow.models.files import read_meta

    runner = CliRunner()
    out = tmp_path / "m.safetensors"
    args = ["create", "pixel", "-o", str(out), "--in-channels", "1", "--spacing", "1.5"]
    args += ["--arg", "spatial_dims=3", "--spatial-dims", "3", "--value-range=-1024..3071"]
    created = runner.invoke(model_app, args)
    assert created.exit_code == 0, created.output
    meta = read_meta(out)
    assert meta.spacing == (1.5, 1.5, 1.5)
    assert meta.value_range == ((-1024.0, 3071.0),)
    info = runner.invoke(model_app, ["info", str(out), "--no-flops", "--no-receptive-field"])
    assert "1.5 x 1.5 x 1.5 mm" in info.output and "-1024..3071" in info.output
    bad = runner.invoke(
        model_app, ["create", "pixel", "-o", str(tmp_path / "b"), "--spacing", "1,2,3"]
    )
    assert bad.exit_code == 1 and "spacing has 3 values for a 2-D model" in bad.output


def test_tables_on_the_cpu_are_the_global_tables_themselves():
    lo, hi, weight = lerp_table(50, 33)
    on_cpu = device_table(50, 33, torch.device("cpu"))
    for table, tensor in zip((lo, hi, weight), on_cpu, strict=True):
        assert tensor.numpy().tobytes() == table.tobytes()
        assert np.shares_memory(tensor.numpy(), table)  # no copy on the CPU
    assert device_table(50, 33, torch.device("cpu")) is on_cpu  # made once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_resampling_on_the_gpu_agrees_with_the_cpu():
    space = model_space((40, 36, 30), (0.7, 1.0, 1.3), (1.0, 1.0, 1.0))
    assert space is not None
    values = torch.randn((2, *space.model_shape), generator=torch.Generator().manual_seed(0))
    region = (slice(3, 37), slice(0, 36), slice(2, 29))
    box = space.grid_region(region)
    origin = tuple(b.start for b in box)
    scores = values[(slice(None), *box)]
    on_gpu = space.to_input(scores.cuda(), origin, region)
    assert on_gpu.device.type == "cuda"
    cuda = torch.device("cuda", torch.cuda.current_device())
    assert all(t.device == cuda for t in device_table(28, 40, cuda))
    on_cpu = space.to_input(scores, origin, region)
    np.testing.assert_allclose(on_gpu.cpu().numpy(), on_cpu.numpy(), rtol=1e-5, atol=1e-6)
