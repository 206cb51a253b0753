"""End to end through segflow.segment: geometry survives, volumes in any orientation, bad input."""

from __future__ import annotations

import dataclasses
import errno

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import torch
import xarray as xr
import zarr
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from segflow import segment
from segflow.errors import ConfigError, InputDataError, ModelError, OutputError

from .conftest import pixel_model, save, textured, threshold_model, write_nifti, write_tif


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:32618", from_origin(300000.0, 4500000.0, 30.0, 30.0)),
        ("EPSG:4326", from_origin(-73.5, 41.2, 0.0003, 0.0003)),
        (None, None),
    ],
)
def test_geometry_round_trips_through_xarray_and_rioxarray(tmp_path, crs, transform):
    image = textured((150, 170), 1, seed=1)
    path = write_tif(tmp_path / "in.tif", image, crs=crs, transform=transform, tile=None)
    with pytest.warns(UserWarning) if crs is None else _no_warning():
        segment(
            path,
            threshold_model(100, spatial_dims=2),
            tmp_path / "o.zarr",
            patch_size=64,
            chunk_size=64,
            device="cpu",
        )
    ds = xr.open_zarr(tmp_path / "o.zarr", mask_and_scale=False)  # nodata is _FillValue
    labels = ds["labels"]
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels.values, (image[0] > 100).astype(np.uint8))
    if crs is None:
        assert labels.rio.crs is None
        assert labels.rio.transform() == Affine.identity()
    else:
        assert labels.rio.crs == CRS.from_string(crs)
        assert labels.rio.transform() == transform


class _no_warning:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


OBLIQUE = np.array(
    [[0.9, -0.3, 0.1, -40.0], [0.3, 0.95, -0.2, 12.5], [-0.1, 0.2, 1.1, 7.0], [0, 0, 0, 1]]
)
AFFINES = {
    "RAS": np.diag([1.5, 1.5, 2.0, 1.0]),
    "LPS": np.diag([-1.0, -1.0, 3.0, 1.0]),
    "LIA": np.array([[-1.0, 0, 0, 128], [0, 0, 1.0, -128], [0, -1.0, 0, 128], [0, 0, 0, 1]]),
    "oblique": OBLIQUE,
}


@pytest.mark.parametrize("orientation", list(AFFINES))
@pytest.mark.parametrize("model_orientation", [None, "RAS"])
def test_threshold_model_reproduces_numpy_in_any_orientation(
    tmp_path, orientation, model_orientation
):
    rng = np.random.default_rng(0)
    volume = rng.integers(-200, 200, size=(37, 29, 23)).astype(np.int16)
    path = write_nifti(tmp_path / "in.nii.gz", volume, AFFINES[orientation])
    model = threshold_model(17.0, orientation=model_orientation)
    segment(path, model, tmp_path / "o.zarr", patch_size=16, overlap=0.25, device="cpu")
    group = zarr.open_group(tmp_path / "o.zarr", mode="r")
    np.testing.assert_array_equal(group["0"][...], (volume > 17).astype(np.uint8))
    stored = np.asarray(group.attrs["segflow"]["geometry"]["affine"])
    np.testing.assert_allclose(stored, AFFINES[orientation], atol=1e-6)


def test_reorientation_for_the_model_is_exactly_inverted(tmp_path):
    # a model that looks at its neighbours along its first axis: wrong axis order or flips show
    import torch
    from torch import nn

    from segflow.models import LoadedModel
    from segflow.models.meta import ClassInfo, ModelMeta

    class FirstAxisGradient(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shifted = torch.nn.functional.pad(x, (0, 0, 0, 0, 1, 0))[:, :, :-1]
            return torch.cat([torch.zeros_like(x), x - shifted], dim=1)

    meta = ModelMeta(
        arch="test",
        spatial_dims=3,
        in_channels=1,
        output_stride=1,
        orientation="RAS",
        classes=(ClassInfo(name="flat"), ClassInfo(name="rising")),
    )
    model = LoadedModel(
        meta=meta, module=FirstAxisGradient(), sha256="grad", path=None, runtime="torch"
    )
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 100, size=(20, 18, 16)).astype(np.int16)
    path = write_nifti(tmp_path / "in.nii.gz", volume, AFFINES["LIA"])
    segment(path, model, tmp_path / "o.zarr", patch_size=32, device="cpu")
    labels = zarr.open_group(tmp_path / "o.zarr", mode="r")["0"][...]
    # LIA -> RAS: the model's first axis (R) is the file's first axis reversed (L)
    ras = np.flip(volume, 0).astype(np.int32)
    rising = np.zeros_like(ras, dtype=bool)
    rising[1:] = ras[1:] > ras[:-1]
    rising[0] = ras[0] > 0
    np.testing.assert_array_equal(labels, np.flip(rising, 0).astype(np.uint8))


def test_two_dimensional_model_runs_slice_by_slice_on_a_volume(tmp_path):
    rng = np.random.default_rng(2)
    volume = rng.integers(0, 100, size=(30, 20, 9)).astype(np.int16)
    path = write_nifti(tmp_path / "in.nii", volume, AFFINES["RAS"])
    result = segment(
        path,
        threshold_model(50.0, spatial_dims=2),
        tmp_path / "o.zarr",
        patch_size=16,
        device="cpu",
    )
    labels = zarr.open_group(tmp_path / "o.zarr", mode="r")["0"][...]
    np.testing.assert_array_equal(labels, (volume > 50).astype(np.uint8))
    assert result.stats["patches_predicted"] >= 9  # at least one patch per slice


def test_wrong_band_count_is_a_model_error_and_writes_nothing(tmp_path):
    path = write_tif(tmp_path / "in.tif", textured((64, 64), 4), tile=None)
    with pytest.raises(ModelError, match=r"4 channel.*expects 1.*--bands"):
        segment(path, threshold_model(1, spatial_dims=2), tmp_path / "o.zarr", device="cpu")
    assert not (tmp_path / "o.zarr").exists()


def test_all_nan_image_is_refused_and_leaves_no_store(tmp_path):
    image = np.full((1, 80, 80), np.nan, np.float32)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    with pytest.raises(InputDataError, match="no valid pixels"):
        segment(path, threshold_model(1, spatial_dims=2), tmp_path / "o.zarr", device="cpu")
    assert not (tmp_path / "o.zarr").exists()


def test_existing_output_is_never_overwritten_without_asking(tmp_path):
    path = write_tif(tmp_path / "in.tif", textured((64, 64), 1), tile=None)
    model = threshold_model(1, spatial_dims=2)
    segment(path, model, tmp_path / "o.zarr", device="cpu")
    with pytest.raises(OutputError, match="exists"):
        segment(path, model, tmp_path / "o.zarr", device="cpu")
    segment(path, model, tmp_path / "o.zarr", device="cpu", overwrite=True)


def test_a_batch_keeps_going_when_one_input_fails(tmp_path):
    good = write_tif(tmp_path / "good.tif", textured((64, 64), 1), tile=None)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"")
    results = segment(
        [good, bad], pixel_model([[0.0], [1.0]], [0.0, -1.0]), tmp_path / "out", device="cpu"
    )
    assert [r.status for r in results] == ["complete", "failed"]
    assert "empty" in (results[1].error or "")
    assert (tmp_path / "out" / "good.zarr").is_dir()
    assert not (tmp_path / "out" / "bad.zarr").exists()


def test_resuming_a_complete_store_changes_nothing(tmp_path):
    path = write_tif(tmp_path / "in.tif", textured((96, 80), 1), tile=None)
    model = threshold_model(100, spatial_dims=2)
    first = segment(path, model, tmp_path / "o.zarr", patch_size=32, chunk_size=32, device="cpu")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "o.zarr").rglob("*") if p.is_file()}
    again = segment(
        path, model, tmp_path / "o.zarr", patch_size=32, chunk_size=32, device="cpu", resume=True
    )
    assert again.stats["class_pixel_counts"] == first.stats["class_pixel_counts"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_region_size_changes_the_tasks_never_the_output(tmp_path):
    from tests.engine.test_region import conv_model

    path = write_tif(tmp_path / "in.tif", textured((333, 287), 3, seed=4), tile=None)
    model = conv_model()
    runs = {}
    for region in (64, 150, None):  # 150 rounds down to two 64-pixel chunks
        out = tmp_path / f"r{region}.zarr"
        result = segment(
            path,
            model,
            out,
            patch_size=64,
            overlap=0.25,
            chunk_size=64,
            region_size=region,
            probabilities="float16",
            device="cpu",
        )
        group = zarr.open_group(out, mode="r")
        tasks = result.stats["region_tasks"]
        runs[region] = (tasks, group["labels"][...], group["probabilities"][...])
    assert [runs[r][0] for r in (64, 150, None)] == [6 * 5, 3 * 3, 1]
    for region in (64, 150):
        np.testing.assert_array_equal(runs[region][1], runs[None][1])
        np.testing.assert_array_equal(
            runs[region][2].view(np.uint16), runs[None][2].view(np.uint16)
        )


def test_region_size_must_be_positive(tmp_path):
    path = write_tif(tmp_path / "in.tif", textured((32, 32), 1), tile=None)
    model = pixel_model([[0.0], [1.0]], [0.0, -1.0])
    with pytest.raises(ConfigError, match="region size must be at least 1"):
        segment(path, model, tmp_path / "o.zarr", region_size=0, device="cpu")
    assert not (tmp_path / "o.zarr").exists()


def test_a_misspelt_option_is_a_one_line_config_error(tmp_path):
    path = write_tif(tmp_path / "a.tif", textured((32, 32), 1))
    with pytest.raises(ConfigError, match="unknown option 'patchsize'; did you mean 'patch_size'"):
        segment(path, threshold_model(1, spatial_dims=2), tmp_path / "o.zarr", patchsize=16)
    assert not (tmp_path / "o.zarr").exists()


def test_options_and_overrides_are_one_run_options(tmp_path):
    from segflow.io.zarr_sink import ZarrSink
    from segflow.options import RunOptions

    path = write_tif(tmp_path / "a.tif", textured((40, 40), 1))
    options = RunOptions(patch_size=16, device="cpu")
    segment(path, threshold_model(1, spatial_dims=2), tmp_path / "o.zarr", options, chunk_size=8)
    parameters = ZarrSink.open(tmp_path / "o.zarr").attrs["parameters"]
    assert parameters["patch_size"] == 16 and parameters["chunk_size"] == 8


def test_a_folder_is_a_batch_as_on_the_command_line(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        write_tif(folder / f"{name}.tif", textured((24, 24), 1))
    results = segment(folder, threshold_model(1, spatial_dims=2), tmp_path / "out", device="cpu")
    assert isinstance(results, list)
    assert [r.output.name for r in results] == ["a.zarr", "b.zarr"]
    assert all(r.status == "complete" for r in results)


@pytest.mark.slow
def test_a_local_cluster_gives_the_threaded_answer(tmp_path):
    path = write_tif(tmp_path / "a.tif", textured((48, 40), 1))
    model = save(threshold_model(1, spatial_dims=2), tmp_path / "m.safetensors")
    options = dict(patch_size=16, chunk_size=16, region_size=16, device="cpu")
    segment(path, model, tmp_path / "threads.zarr", **options)
    segment(path, model, tmp_path / "local.zarr", scheduler="local", workers=1, **options)
    threads = zarr.open_group(tmp_path / "threads.zarr", mode="r")["labels"][...]
    local = zarr.open_group(tmp_path / "local.zarr", mode="r")["labels"][...]
    np.testing.assert_array_equal(local, threads)


class _FailsOnHotPixels(torch.nn.Module):
    """A pointwise model that fails as a broken GPU (or disk) would, on patches holding a 255."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x >= 255).any()):
            raise self.error
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1] - 100.0], dim=1)


def _hot_scene(tmp_path):
    """256^2 with a hot block that only the patches of region rows/columns 128:256 see."""
    image = textured((256, 256), 1, seed=2).clip(0, 200)
    image[0, 176:208, 176:208] = 255
    return write_tif(tmp_path / "hot.tif", image, tile=None)


CUDA_FAILURE = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call"
)


@pytest.mark.parametrize(
    ("error", "cause", "hint", "retryable"),
    [
        (
            RuntimeError(CUDA_FAILURE),
            "RuntimeError: CUDA error: an illegal memory access was encountered;",
            "check the GPU (nvidia-smi) or use --device cpu",
            False,
        ),
        (
            RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"),
            "RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB;",
            "use a smaller --batch-size or --region-size",
            False,
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "No space left on device [ENOSPC];",
            "free some space",
            False,
        ),
        (OSError(errno.ESTALE, "Stale file handle"), "[ESTALE]", "fix the cause", True),
        (KeyError("bug"), "KeyError: 'bug';", "report it with the input's details", False),
    ],
    ids=["cuda", "cuda-oom", "full-disk", "stale-nfs", "bug"],
)
def test_a_failure_inside_a_region_names_the_input_the_region_and_the_cause(
    tmp_path, error, cause, hint, retryable
):
    from segflow.errors import RegionError
    from segflow.io.zarr_sink import ZarrSink

    base = threshold_model(100.0, spatial_dims=2)
    model = dataclasses.replace(base, module=_FailsOnHotPixels(error), sha256="hot")
    path, store = _hot_scene(tmp_path), tmp_path / "o.zarr"
    options = dict(patch_size=64, overlap=16, chunk_size=64, region_size=128, device="cpu")
    with pytest.raises(RegionError) as info:
        segment(path, model, store, **options)
    message = str(info.value)
    assert "\n" not in message and info.value.retryable is retryable
    assert message.startswith(f"{path}: region rows 128:256, columns 128:256 failed: ")
    assert cause in message and hint in message
    assert f"{store} is incomplete (" in message and "then rerun with --resume" in message
    sink = ZarrSink.open(store)
    assert not sink.is_complete and len(sink.done_chunks()) < 16  # incomplete, resumable
