"""Engine properties: tiled equals whole, chunking never changes the answer, edges, nodata."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from segflow import segment
from segflow.engine import region as region_module
from segflow.engine.blend import Accumulator
from segflow.engine.region import blend_probabilities, process_region, task_indices
from segflow.engine.resample import model_space, scores_labels
from segflow.engine.uncertainty import probabilities_uncertainty
from segflow.io.open import open_source
from segflow.models import LoadedModel
from segflow.models.meta import ClassInfo, ModelMeta
from segflow.options import RunOptions
from segflow.plan import plan
from tests.conftest import pixel_model, textured, two_worker_client, write_tif


def labels_of(store: Path) -> np.ndarray:
    return zarr.open_group(store, mode="r")["labels"][...]


class ConvStack(nn.Module):
    """Two 3x3 convolutions (receptive-field halo of 2 px) with integer weights.

    Integer inputs and weights keep every sum exact in float32, so tiled and
    whole-image inference must agree bit for bit wherever the halo fits.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 5, 3, padding=1)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.copy_(torch.randint(-2, 3, conv.weight.shape, generator=g).float())
                conv.bias.copy_(torch.randint(-3, 4, conv.bias.shape, generator=g).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def conv_model() -> LoadedModel:
    meta = ModelMeta(
        arch="convstack",
        in_channels=3,
        output_stride=1,
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(5)),
    )
    return LoadedModel(
        meta=meta, module=ConvStack().eval(), sha256="convstack", path=None, runtime="torch"
    )


def whole_image_labels(model: nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        logits = model(torch.from_numpy(image.astype(np.float32))[None])[0]
    return torch.argmax(logits, dim=0).numpy().astype(np.uint8)


def test_center_crop_equals_whole_image_inference_exactly(tmp_path):
    image = (textured((203, 177), 3, seed=1) // 16).astype(np.uint8)  # small integers
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = conv_model()
    out = segment(
        path,
        model,
        tmp_path / "out.zarr",
        patch_size=48,
        overlap=8,
        blend="center",
        chunk_size=64,
        device="cpu",
    )
    assert out.status == "complete"
    expected = whole_image_labels(model.module, image)
    np.testing.assert_array_equal(labels_of(tmp_path / "out.zarr"), expected)


def test_gaussian_blending_agrees_with_whole_image_inference(tmp_path):
    from segflow.models import create_model
    from segflow.models.meta import Normalization

    torch.manual_seed(0)
    module = create_model("unet2d", in_channels=3, classes=4, depth=3, base_channels=8).eval()
    norm = Normalization(mean=(128.0,) * 3, std=(64.0,) * 3)
    meta = ModelMeta(
        arch="unet2d",
        in_channels=3,
        output_stride=8,
        normalization=norm,
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(4)),
    )
    model = LoadedModel(meta=meta, module=module, sha256="unet2d", path=None, runtime="torch")
    image = textured((320, 264), 3, seed=2)
    path = write_tif(tmp_path / "in.tif", image)
    segment(
        path,
        model,
        tmp_path / "g.zarr",
        patch_size=128,
        overlap=0.25,
        blend="gaussian",
        device="cpu",
    )
    with torch.inference_mode():
        x = torch.from_numpy((image.astype(np.float32) - 128.0) / 64.0)[None]
        expected = torch.argmax(module(x)[0], dim=0).numpy()
    agreement = (labels_of(tmp_path / "g.zarr") == expected).mean()
    assert agreement >= 0.999, agreement


@pytest.mark.parametrize("blend", ["gaussian", "center", "hann"])
def test_chunk_size_does_not_change_a_single_bit(tmp_path, blend):
    image = textured((333, 287), 3, seed=3)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = conv_model()
    results = []
    for chunk in (64, 100, 333):
        out = tmp_path / f"c{chunk}.zarr"
        segment(
            path,
            model,
            out,
            patch_size=64,
            overlap=0.25,
            blend=blend,
            chunk_size=chunk,
            probabilities="float16",
            device="cpu",
        )
        group = zarr.open_group(out, mode="r")
        results.append((group["labels"][...], group["probabilities"][...]))
    for labels, probs in results[1:]:
        np.testing.assert_array_equal(labels, results[0][0])
        np.testing.assert_array_equal(probs.view(np.uint16), results[0][1].view(np.uint16))


def test_threaded_and_local_cluster_outputs_are_bit_identical(tmp_path):

    image = textured((260, 300), 3, seed=4)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = conv_model()
    kwargs = dict(patch_size=64, overlap=0.25, chunk_size=96, probabilities="uint8", device="cpu")
    segment(path, model, tmp_path / "threads.zarr", **kwargs)
    with two_worker_client() as client:
        segment(path, model, tmp_path / "cluster.zarr", scheduler=client, **kwargs)
    a = zarr.open_group(tmp_path / "threads.zarr", mode="r")
    b = zarr.open_group(tmp_path / "cluster.zarr", mode="r")
    np.testing.assert_array_equal(a["labels"][...], b["labels"][...])
    np.testing.assert_array_equal(a["probabilities"][...], b["probabilities"][...])


@pytest.mark.parametrize("shape", [(1, 1), (1, 257), (257, 1), (5, 7), (31, 500), (129, 131)])
def test_every_pixel_of_odd_and_tiny_images_is_predicted(tmp_path, shape):
    image = textured(shape, 1, seed=5)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    # class 1 exactly where the value exceeds 100: a per-pixel truth to compare against
    model = pixel_model([[0.0], [1.0]], [0.0, -100.0])
    segment(path, model, tmp_path / "o.zarr", patch_size=64, overlap=0.25, device="cpu")
    np.testing.assert_array_equal(labels_of(tmp_path / "o.zarr"), (image[0] > 100).astype(np.uint8))


def test_nodata_is_written_where_the_input_is_nodata_and_skipped_patches(tmp_path):
    image = textured((300, 300), 2, seed=6).astype(np.uint16) + 1
    image[:, :, :130] = 0  # a wide nodata border: whole patches are nodata
    image[:, 200:203, 250:260] = 0  # a small hole
    path = write_tif(tmp_path / "in.tif", image, nodata=0, tile=None)
    model = pixel_model([[0.0, 0.0], [1.0, 0.0]], [0.0, -100.0])
    result = segment(path, model, tmp_path / "o.zarr", patch_size=64, overlap=0.25, device="cpu")
    labels = labels_of(tmp_path / "o.zarr")
    nodata_mask = (image == 0).all(axis=0)
    assert (labels[nodata_mask] == 255).all()
    np.testing.assert_array_equal(
        labels[~nodata_mask], (image[0][~nodata_mask] > 100).astype(np.uint8)
    )
    assert result.stats["patches_skipped_nodata"] > 0


def test_float_nan_is_nodata(tmp_path):
    image = textured((100, 90), 1, seed=7).astype(np.float32)
    image[0, 10:20, 10:30] = np.nan
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = pixel_model([[0.0], [1.0]], [0.0, -100.0])
    segment(path, model, tmp_path / "o.zarr", patch_size=32, device="cpu")
    labels = labels_of(tmp_path / "o.zarr")
    assert (labels[10:20, 10:30] == 255).all()
    assert (labels[30:] != 255).all()


def test_normalization_is_global_not_per_tile(tmp_path):
    from segflow.models.meta import Normalization

    # a flat image: per-tile normalization would map every tile to the same values
    image = np.full((1, 128, 128), 50, np.uint8)
    image[:, :, 64:] = 150
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    model = pixel_model(
        [[0.0], [1.0]], [0.0, 0.0], normalization=Normalization(mean=(100.0,), std=(10.0,))
    )
    segment(path, model, tmp_path / "o.zarr", patch_size=32, overlap=0, device="cpu")
    labels = labels_of(tmp_path / "o.zarr")
    assert (labels[:, :64] == 0).all() and (labels[:, 64:] == 1).all()


def test_batch_buffers_are_reused_and_never_lent_twice():
    from segflow.engine.batches import BatchBuffers

    buffers = BatchBuffers((4, 3, 8, 8))
    first = buffers.take(4)
    second = buffers.take(2)  # none free: a second buffer
    assert second.shape == (2, 3, 8, 8)
    assert first.data_ptr() != second.data_ptr()
    buffers.give_back(second)
    again = buffers.take(3)  # the given-back buffer, viewed for three patches
    assert again.data_ptr() == second.data_ptr()
    assert again.shape == (3, 3, 8, 8)
    assert buffers.take(1).data_ptr() not in (first.data_ptr(), again.data_ptr())


def test_edge_patches_in_reused_batches_are_padded_with_zeros():
    # a reused buffer holds the previous batch: an edge patch's padding must be
    # zeroed, not left as that batch's pixels
    from segflow.engine.batches import BatchBuffers, cut_patches
    from segflow.engine.grid import make_grid

    grid = make_grid((40, 100), 48, 8)  # rows shorter than a patch: every patch is padded
    raw = np.full((3, 40, 100), 7, np.uint8)
    valid = np.ones((40, 100), bool)
    buffers = BatchBuffers((2, 3, 48, 48))
    stale = buffers.take(2)
    stale.fill_(float("nan"))
    buffers.give_back(stale)
    extents = [grid.extent(index) for index in list(grid.indices())[:2]]
    batch = cut_patches(raw, valid, (0, 0), grid, None, extents, buffers=buffers)
    assert batch.data_ptr() == stale.data_ptr()
    assert (batch[:, :, :40] == 7).all()
    assert (batch[:, :, 40:] == 0).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_class_counts_are_counted_in_blocks_and_leave_nodata_out(monkeypatch, dtype):
    from segflow.engine import region as engine

    monkeypatch.setattr(engine, "COUNT_BLOCK", 7)  # blocks that split the array unevenly
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (5, 9, 3)).astype(dtype)
    labels[0] = np.iinfo(dtype).max  # nodata
    expected = np.bincount(labels[labels != np.iinfo(dtype).max], minlength=4)
    assert engine.class_counts(labels, 4) == expected.tolist()


def test_a_region_writes_the_same_bytes_on_any_thread_count(tmp_path):
    # a resumed run has other tasks in flight, so another share of the cores per task
    image = textured((230, 190), 3, seed=8)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    options = RunOptions.from_mapping(
        {"patch_size": 64, "chunk_size": 128, "device": "cpu", "probabilities": "float16"}
    )
    stores = []
    for threads in (1, 2, 3):
        out = (tmp_path / f"t{threads}.zarr").absolute()
        work = plan(open_source(path.absolute()), conv_model(), out, options)
        for task in task_indices(work):
            process_region(dataclasses.replace(work, task_threads=threads), task)
        group = zarr.open_group(out, mode="r")
        stores.append((group["labels"][...], group["probabilities"][...]))
    for labels, probabilities in stores[1:]:
        np.testing.assert_array_equal(labels, stores[0][0])
        assert probabilities.tobytes() == stores[0][1].tobytes()


# -- resampling back where the blend lives: by slabs, bit-identical to the whole blend --

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
        ],
    ),
]


def _filled_blend(classes: int, scores: str, device: str) -> Accumulator:
    """A blend of random sums over a 3-D model-grid box, with a corner no patch covered."""
    region = (slice(3, 40), slice(0, 33), slice(5, 34))
    accumulator = Accumulator(
        classes,
        region,
        scores=scores,
        device=torch.device(device),  # type: ignore[arg-type]
    )
    generator = torch.Generator().manual_seed(classes)
    shape = accumulator.logits.shape
    weights = torch.rand(shape[1:], generator=generator) + 0.1
    weights[:4, :5, :6] = 0.0
    sums = torch.randn(shape, generator=generator) * 3.0 * weights
    if scores == "probabilities":
        sums = torch.rand(shape, generator=generator) * weights
    sums[:, :4, :5, :6] = 0.0
    accumulator.logits.copy_(sums)
    assert accumulator.weights is not None
    accumulator.weights.copy_(weights)
    return accumulator


@pytest.mark.parametrize(
    ("classes", "scores"), [(3, "logits"), (1, "logits"), (2, "probabilities")]
)
def test_a_box_of_the_blend_has_the_whole_blends_probabilities(classes, scores):
    accumulator = _filled_blend(classes, scores, "cpu")
    whole = torch.nan_to_num_(torch.from_numpy(accumulator.probabilities()), nan=0.0)
    for box in [
        (slice(0, 37), slice(0, 33), slice(0, 29)),
        (slice(2, 9), slice(4, 30), slice(1, 7)),
    ]:
        part = blend_probabilities(accumulator, box)
        assert part.numpy().tobytes() == whole[(slice(None), *box)].contiguous().numpy().tobytes()


def _resampling_work(classes: int) -> SimpleNamespace:
    """The parts of a RegionWork that resampling back reads."""
    sink = SimpleNamespace(label_dtype=np.dtype(np.uint8))
    return SimpleNamespace(sink=sink, write_probabilities=True, write_uncertainty=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("classes", "scores"), [(3, "logits"), (1, "logits"), (2, "probabilities")]
)
def test_resampling_back_by_slabs_on_the_blends_device(monkeypatch, device, classes, scores):
    # the model grid of a 0.7 x 1 x 1.3 mm input for a 1 mm model: finer, same, coarser
    space = model_space((60, 40, 30), (0.7, 1.0, 1.3), (1.0, 1.0, 1.0))
    assert space is not None and space.model_shape == (42, 40, 39)
    region = (slice(5, 55), slice(0, 33), slice(4, 26))
    accumulator = _filled_blend(classes, scores, device)
    inside = zip(accumulator.region, space.grid_region(region), strict=True)
    assert all(a.start <= b.start and b.stop <= a.stop for a, b in inside)  # the blend holds it
    # the reference: the whole blend's probabilities on the CPU, resampled back at once
    whole = torch.nan_to_num_(torch.from_numpy(accumulator.probabilities()), nan=0.0)
    expected = space.to_input(whole, accumulator.origin, region)
    work = _resampling_work(classes)
    monkeypatch.setattr(region_module, "RESAMPLE_SLAB_BYTES", 4 * classes * 33 * 22 * 7)
    labels, probabilities, uncertainty = region_module._resampled_outputs(
        work,  # type: ignore[arg-type]
        space,
        accumulator,
        region,
    )
    assert probabilities is not None and uncertainty is not None
    if device == "cpu":  # the same bits as the whole blend resampled at once
        assert probabilities.tobytes() == expected.numpy().tobytes()
        np.testing.assert_array_equal(labels, scores_labels(expected).numpy())
        np.testing.assert_array_equal(uncertainty, probabilities_uncertainty(expected))
    else:  # another device rounds its own way: within float tolerance, labels but near-ties
        np.testing.assert_allclose(probabilities, expected.numpy(), rtol=1e-5, atol=1e-6)
        assert (labels == scores_labels(expected).numpy()).mean() >= 0.999
        assert np.abs(uncertainty.astype(int) - probabilities_uncertainty(expected)).max() <= 1
