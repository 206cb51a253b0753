"""The uncertainty output: the normalized entropy of the blended class probabilities, as uint8."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from scipy import special, stats

from segflow import segment
from segflow.engine import uncertainty as engine
from segflow.engine.blend import Accumulator
from segflow.engine.ensemble import Ensemble
from segflow.engine.execute import execute
from segflow.engine.region import process_region, task_indices
from segflow.io.open import open_source
from segflow.io.zarr_sink import ZarrSink
from segflow.models import LoadedModel
from segflow.models.meta import Normalization
from segflow.options import RunOptions
from segflow.plan import plan
from tests.conftest import pixel_model, textured, two_worker_client, write_nifti, write_tif
from tests.engine.test_ensemble import pointwise_model, reference_mean
from tests.engine.test_region import conv_model


def stored(normalized: np.ndarray) -> np.ndarray:
    """The documented formula, from scipy's entropy: rint(254 * H / ln K)."""
    return np.rint(np.clip(normalized, 0.0, 1.0) * 254).astype(np.uint8)


def reference_logits(model: Any, image: np.ndarray) -> np.ndarray:
    """A pointwise model's logits over the whole image, as the engine normalizes its input."""
    x = (torch.from_numpy(image.astype(np.float32))[None] - 128.0) / 64.0
    with torch.inference_mode():
        return model.module(x)[0].numpy()


def scaled_conv_model() -> LoadedModel:
    """The 3x3 convolutions on inputs of -2..2: logits small enough for every entropy."""
    model = conv_model()
    norm = Normalization(mean=(128.0,) * 3, std=(64.0,) * 3)
    meta = model.meta.model_copy(update={"normalization": norm})
    return LoadedModel(meta, model.module, "convstack-scaled", None, "torch")


def uncertainty_of(store: Path) -> np.ndarray:
    return ZarrSink.open(store).read_uncertainty()


# --- the formula --------------------------------------------------------------------------------


def test_certain_and_uniform_pixels_are_the_ends_of_the_scale() -> None:
    p = np.array([[1.0, 1 / 3, 0.5, np.nan], [0.0, 1 / 3, 0.5, np.nan], [0.0, 1 / 3, 0.0, 0.2]])
    u = engine.quantize(engine.probability_entropy(p.astype(np.float32)))
    h = stats.entropy(p[:, 2]) / math.log(3)
    assert u.tolist() == [0, 254, round(254 * h), 255]


def test_probability_and_logit_entropy_equal_scipy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(5, 4000))
    p = special.softmax(logits, axis=0)
    expected = stats.entropy(p, axis=0) / math.log(5)
    np.testing.assert_allclose(engine.logit_entropy(logits), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(engine.probability_entropy(p), expected, rtol=1e-12, atol=1e-14)


def test_one_sigmoid_channel_is_the_binary_entropy() -> None:
    z = np.linspace(-8, 8, 101)[None]
    q = special.expit(z[0])
    expected = stats.entropy(np.stack([q, 1 - q]), base=2, axis=0)
    np.testing.assert_allclose(engine.logit_entropy(z), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(engine.probability_entropy(q[None]), expected, rtol=1e-9)


def test_the_blend_is_read_slab_by_slab_with_the_same_answer(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    region = (slice(0, 37), slice(0, 23))
    logits = torch.from_numpy(rng.normal(size=(3, 37, 23)).astype(np.float32))
    answers = []
    for slab in (1, 7 * 3 * 23, 2**20):
        monkeypatch.setattr(engine, "SLAB_VALUES", slab)
        acc = Accumulator(3, region)
        acc.add(logits, region, torch.full((37, 23), 0.5))
        acc.weights[:2] = 0  # type: ignore[index]  # no patch there: nodata
        answers.append(engine.blend_uncertainty(acc))
    assert (answers[0][:2] == 255).all() and (answers[0][2:] < 255).all()
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer, answers[0])


# --- runs ---------------------------------------------------------------------------------------


def test_one_model_stores_the_entropy_of_its_softmax_exactly(tmp_path: Path) -> None:
    image = textured((150, 130), 2, seed=3)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = pointwise_model(1)
    # centre-crop blending: each pixel's blend is exactly its patch's logits
    kwargs = dict(patch_size=48, overlap=8, blend="center", chunk_size=64, device="cpu")
    segment(path, model, tmp_path / "o.zarr", uncertainty=True, **kwargs)
    z = reference_logits(model, image).astype(np.float64)
    expected = stored(stats.entropy(special.softmax(z, axis=0), axis=0) / math.log(3))
    np.testing.assert_array_equal(uncertainty_of(tmp_path / "o.zarr"), expected)
    assert int(expected.max()) - int(expected.min()) > 150  # the test sees most of the scale


def test_an_ensemble_stores_the_entropy_of_its_mean_exactly(tmp_path: Path) -> None:
    image = textured((120, 100), 2, seed=4)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    members = [pointwise_model(s) for s in (1, 2, 3)]
    kwargs = dict(patch_size=32, overlap=8, blend="center", chunk_size=48, device="cpu")
    segment(path, Ensemble(tuple(members)), tmp_path / "e.zarr", uncertainty=True, **kwargs)
    mean = reference_mean(image, members, [1.0, 1.0, 1.0]).astype(np.float64)
    expected = stored(stats.entropy(mean, axis=0) / math.log(3))
    np.testing.assert_array_equal(uncertainty_of(tmp_path / "e.zarr"), expected)


def test_one_sigmoid_channel_stores_the_binary_entropy(tmp_path: Path) -> None:
    image = textured((70, 90), 1, seed=5)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = pixel_model([[0.05]], [-6.0])  # logit 0 at 120: sure far from it, unsure near it
    segment(path, model, tmp_path / "s.zarr", patch_size=32, blend="center", uncertainty=True)
    z = image[0].astype(np.float32) * np.float32(0.05) - np.float32(6.0)
    q = special.expit(z.astype(np.float64))
    expected = stored(stats.entropy(np.stack([q, 1 - q]), base=2, axis=0))
    got = uncertainty_of(tmp_path / "s.zarr")
    assert np.abs(got.astype(int) - expected).max() <= 1  # the conv's float32 rounding
    assert (got == expected).mean() > 0.99


def test_nodata_is_255_and_xarray_decodes_the_scale(tmp_path: Path) -> None:
    image = textured((100, 120), 2, seed=6).astype(np.uint16) + 1
    image[:, :, :70] = 0  # whole patches of nodata
    image[:, 80:83, 90:95] = 0
    path = write_tif(tmp_path / "in.tif", image, nodata=0, tile=None)
    segment(path, pointwise_model(2), tmp_path / "n.zarr", patch_size=32, uncertainty=True)
    u = uncertainty_of(tmp_path / "n.zarr")
    nodata = (image == 0).all(axis=0)
    assert (u[nodata] == 255).all() and (u[~nodata] <= 254).all()
    decoded = xr.open_zarr(tmp_path / "n.zarr")["uncertainty"].values
    assert np.isnan(decoded[nodata]).all()
    np.testing.assert_allclose(decoded[~nodata], u[~nodata] / 254.0)


@pytest.mark.parametrize("resolution", [None, 45.0])
def test_chunk_and_region_sizes_change_no_bit(tmp_path: Path, resolution: float | None) -> None:
    """Gaussian blending, patches handed on between regions, and (45 m) resampling."""
    three = write_tif(tmp_path / "in3.tif", textured((190, 170), 3, seed=7), tile=None)
    two = write_tif(tmp_path / "in2.tif", textured((190, 170), 2, seed=7), tile=None)
    runs = {
        # one model: the convolutions, or pointwise at a coarser resolution (resampled)
        "one": (two, pointwise_model(6, resolution=resolution))
        if resolution
        else (three, scaled_conv_model()),
        "ensemble": (
            two,
            Ensemble(tuple(pointwise_model(s, resolution=resolution) for s in (4, 5))),
        ),
    }
    for name, (path, model) in runs.items():
        found = []
        for chunk, region in ((32, 64), (48, 96), (64, None)):
            store = tmp_path / f"{name}-{chunk}.zarr"
            segment(
                path,
                model,
                store,
                patch_size=32,
                chunk_size=chunk,
                region_size=region,
                uncertainty=True,
                device="cpu",
            )
            found.append(uncertainty_of(store))
        assert found[0].max() < 255 and len(np.unique(found[0])) > 50, name
        for u in found[1:]:
            np.testing.assert_array_equal(u, found[0], err_msg=name)


def test_a_resumed_run_writes_the_same_bytes(tmp_path: Path) -> None:
    image = textured((150, 130), 2, seed=8)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = pointwise_model(3)
    options = RunOptions.from_mapping(
        {
            "patch_size": 32,
            "chunk_size": 32,
            "region_size": 64,
            "device": "cpu",
            "uncertainty": True,
        }
    )
    segment(path, model, tmp_path / "full.zarr", options)
    work = plan(open_source(path.absolute()), model, (tmp_path / "part.zarr").absolute(), options)
    tasks = task_indices(work)
    execute(work, tasks[: len(tasks) // 2])
    part = ZarrSink.open(tmp_path / "part.zarr")
    assert 0 < len(part.done_chunks()) < part.chunks_total
    resumed = segment(path, model, tmp_path / "part.zarr", options, resume=True)
    assert resumed.stats["region_tasks"] == len(tasks) - len(tasks) // 2
    full = uncertainty_of(tmp_path / "full.zarr")
    np.testing.assert_array_equal(uncertainty_of(tmp_path / "part.zarr"), full)


def test_any_thread_count_writes_the_same_bytes(tmp_path: Path) -> None:
    image = textured((130, 120), 2, seed=9)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    options = RunOptions.from_mapping(
        {"patch_size": 32, "chunk_size": 64, "device": "cpu", "uncertainty": True}
    )
    found = []
    for threads in (1, 3):
        out = (tmp_path / f"t{threads}.zarr").absolute()
        work = plan(open_source(path.absolute()), pointwise_model(2), out, options)
        for task in task_indices(work):
            process_region(dataclasses.replace(work, task_threads=threads), task)
        found.append(uncertainty_of(out))
    np.testing.assert_array_equal(found[1], found[0])


@pytest.mark.slow
def test_threaded_and_local_cluster_runs_are_bit_identical(tmp_path: Path) -> None:

    image = textured((160, 140), 3, seed=10)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = scaled_conv_model()
    kwargs: dict[str, Any] = dict(patch_size=48, chunk_size=64, uncertainty=True, device="cpu")
    segment(path, model, tmp_path / "threads.zarr", **kwargs)
    with two_worker_client() as client:
        segment(path, model, tmp_path / "cluster.zarr", scheduler=client, **kwargs)
    threads = uncertainty_of(tmp_path / "threads.zarr")
    np.testing.assert_array_equal(uncertainty_of(tmp_path / "cluster.zarr"), threads)


def test_a_volume_store_holds_it_as_an_ome_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    volume = rng.normal(100, 30, size=(40, 36, 30)).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    path = write_nifti(tmp_path / "ct.nii.gz", volume, affine)
    model = pixel_model([[0.0], [0.05]], [0.0, -5.0], spatial_dims=3)
    segment(path, model, tmp_path / "v.zarr", patch_size=16, chunk_size=16, uncertainty=True)
    sink = ZarrSink.open(tmp_path / "v.zarr")
    assert sink.uncertainty_path == "uncertainty/0"
    z = volume.astype(np.float64) * 0.05 - 5.0
    q = special.expit(z)
    expected = stored(stats.entropy(np.stack([q, 1 - q]), base=2, axis=0))
    assert np.abs(sink.read_uncertainty().astype(int) - expected).max() <= 1
    import zarr

    group = zarr.open_group(tmp_path / "v.zarr", mode="r")["uncertainty"]
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"
