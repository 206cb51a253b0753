import numpy as np
import pytest
import torch

from segflow.engine.blend import (
    WEIGHT_FLOOR,
    Accumulator,
    BlendMode,
    class_probabilities,
    patch_window,
    window_1d,
)
from segflow.engine.grid import make_grid
from segflow.errors import ConfigError


@pytest.mark.parametrize("mode", list(BlendMode))
@pytest.mark.parametrize("size", [1, 2, 7, 64, 96])
def test_windows_are_positive_with_peak_one(mode, size):
    w = window_1d(mode, size)
    assert w.dtype == np.float32 and w.shape == (size,)
    assert w.min() >= WEIGHT_FLOOR
    assert w.max() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w[::-1], rtol=1e-6)  # symmetric


@pytest.mark.parametrize("mode", list(BlendMode))
@pytest.mark.parametrize("shape", [(130, 97), (40, 33, 29)])
def test_weights_sum_to_a_positive_value_everywhere_including_the_border(mode, shape):
    patch = 32 if len(shape) == 2 else 16
    grid = make_grid(shape, patch, 0.25)
    region = tuple(slice(0, n) for n in shape)
    acc = Accumulator(1, region)
    for index in grid.indices():
        ones = torch.ones((1, *grid.patch))
        acc.add(ones, grid.extent(index), patch_window(mode, grid, index))
    assert acc.weights is not None
    weights = acc.weights.numpy()
    assert (weights > 0).all(), "a pixel got zero weight"
    # blending a constant gives the constant back: the normalized windows sum to one
    normalized = acc.logits[0].numpy() / weights
    np.testing.assert_allclose(normalized, 1.0, rtol=1e-5)
    if mode is BlendMode.CENTER:
        assert (weights == 1.0).all()  # exactly one patch per pixel


def test_blend_mode_parse_suggests_a_fix():
    assert BlendMode.parse("Gaussian") is BlendMode.GAUSSIAN
    with pytest.raises(ConfigError, match="did you mean 'gaussian'"):
        BlendMode.parse("gausian")


def test_accumulator_labels_probabilities_and_nodata():
    region = (slice(0, 4), slice(0, 4))
    acc = Accumulator(3, region)
    logits = torch.zeros((3, 4, 4))
    logits[2, :2] = 5.0
    logits[1, 2:] = 5.0
    window = torch.ones((4, 4))
    window[3, 3] = 0.0  # a pixel no patch weighs has no probabilities
    acc.add(logits, region, window)
    labels = acc.labels(np.dtype(np.uint8))
    assert labels.dtype == np.uint8
    assert (labels[:2] == 2).all() and labels[2, 0] == 1
    probs = acc.probabilities()
    np.testing.assert_allclose(np.nansum(probs, axis=0)[:3], 1.0, rtol=1e-6)
    assert np.isnan(probs[:, 3, 3]).all()


def test_single_class_output_is_a_sigmoid_threshold():
    region = (slice(0, 2), slice(0, 2))
    acc = Accumulator(1, region)
    acc.add(torch.tensor([[[-1.0, 2.0], [0.5, -3.0]]]), region, torch.ones((2, 2)))
    assert acc.labels(np.dtype(np.uint8)).tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize("classes", [2, 6, 256, 300])
def test_argmax_channels_matches_torch_argmax(classes):
    from segflow.engine.blend import argmax_channels

    logits = torch.randn(classes, 37, 41)
    logits[:, 0, 0] = 1.0  # a tie everywhere: the first class wins, as in torch.argmax
    np.testing.assert_array_equal(
        argmax_channels(logits).long().numpy(), torch.argmax(logits, 0).numpy()
    )


def _blended_probabilities(classes: int, threads: int) -> bytes:
    """A region blended from random patches, its probabilities made on ``threads`` threads."""
    torch.manual_seed(0)
    grid = make_grid((301, 277), 64, 0.25)
    acc = Accumulator(classes, (slice(0, 301), slice(0, 277)))
    for index in grid.indices():
        window = patch_window(BlendMode.GAUSSIAN, grid, index)
        acc.add(torch.randn(classes, 64, 64) * 8, grid.extent(index), window)
    outer = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return acc.probabilities().tobytes()
    finally:
        torch.set_num_threads(outer)


@pytest.mark.parametrize("classes", [1, 6])
def test_probabilities_are_the_same_bytes_on_any_thread_count(classes):
    # torch's softmax and sigmoid round by where the threads split the work; a resumed
    # run has another share of the cores than the run it continues
    reference = _blended_probabilities(classes, 1)
    for threads in (2, 3, 5):
        assert _blended_probabilities(classes, threads) == reference


@pytest.mark.parametrize("classes", [1, 2, 6])
def test_class_probabilities_of_a_pixel_do_not_depend_on_the_region_it_lies_in(classes):
    logits = torch.randn(classes, 301, 317, generator=torch.Generator().manual_seed(3)) * 8
    whole = class_probabilities(logits)
    for rows, cols in [
        (slice(0, 64), slice(0, 317)),
        (slice(5, 301), slice(3, 200)),
        (slice(100, 101), slice(7, 18)),
        (slice(0, 301), slice(1, 2)),
    ]:
        part = class_probabilities(logits[:, rows, cols].contiguous())
        assert part.numpy().tobytes() == whole[:, rows, cols].contiguous().numpy().tobytes()


def test_a_thread_keeps_one_accumulator_buffer_per_name_whatever_the_region_shapes():
    from segflow.engine import blend

    for size in (40, 33, 40, 21):  # interior and edge regions come in any order
        Accumulator(3, (slice(0, size), slice(0, 40)), track_weights=True)
    kept = blend._BUFFERS.cache
    assert sorted(name for name, _, _ in kept) == ["logits", "weights"]
    assert all(shape[-2:] == (21, 40) for _, shape, _ in kept)
