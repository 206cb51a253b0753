"""Batches: normalization as the engine does it, slices squeezed, prefetching in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segflow.models.meta import Normalization
from segflow.train.augment import NO_AUGMENT
from segflow.train.batches import BatchMaker, Prefetcher, evaluate, predict_tiles, squeeze_axis_of
from segflow.train.sampling import PatchSampler, TrainPair, open_pair

from ..conftest import write_nifti, write_tif


def _sampler(tmp_path: Path) -> PatchSampler:
    image = np.full((2, 64, 64), 10, dtype=np.uint16)
    image[1] = 30
    mask = np.zeros((1, 64, 64), dtype=np.uint8)
    mask[0, 32:] = 1
    pair = TrainPair(write_tif(tmp_path / "a.tif", image), write_tif(tmp_path / "a_mask.tif", mask))
    return PatchSampler([open_pair(pair)], 32, 2)


def test_batches_are_normalized_with_the_model_statistics(tmp_path: Path) -> None:
    norm = Normalization(mean=(10.0, 20.0), std=(1.0, 5.0))
    maker = BatchMaker(_sampler(tmp_path), norm, NO_AUGMENT, channels_last=True)
    x, y = maker.random(np.random.default_rng(0), 3)
    assert x.shape == (3, 2, 32, 32) and y.shape == (3, 32, 32) and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.all(x[:, 0] == 0) and torch.all(x[:, 1] == 2)


def test_prefetcher_yields_every_batch_in_order_and_passes_errors(tmp_path: Path) -> None:
    maker = BatchMaker(_sampler(tmp_path), None, NO_AUGMENT)
    with Prefetcher(maker, np.random.default_rng(1), 2, 5) as batches:
        first = [y.clone() for _, y in batches]
    expected_rng = np.random.default_rng(1)
    expected = [maker.random(expected_rng, 2)[1] for _ in range(5)]
    assert len(first) == 5 and all(torch.equal(a, b) for a, b in zip(first, expected))
    with Prefetcher(maker, np.random.default_rng(1), 2, 100) as batches:
        next(batches)  # leaving early stops the thread
    maker.sampler.num_classes = 1  # class 1 in the masks is now out of range
    with (
        pytest.raises(ValueError, match="class id 1"),
        Prefetcher(maker, np.random.default_rng(0), 4, 3) as batches,
    ):
        list(batches)


def test_squeeze_axis_and_slice_batches(tmp_path: Path) -> None:
    assert squeeze_axis_of((32, 32), (32, 32)) is None
    assert squeeze_axis_of((32, 1, 32), (32, 32)) == 1
    vol = np.zeros((16, 16, 4), dtype=np.int16)
    lab = np.zeros((16, 16, 4), dtype=np.uint8)
    lab[8:] = 1
    vol[8:] = 100
    pair = TrainPair(
        write_nifti(tmp_path / "v.nii", vol, np.eye(4)),
        write_nifti(tmp_path / "v_label.nii", lab, np.eye(4)),
    )
    sampler = PatchSampler([open_pair(pair)], (16, 16, 1), 2)
    maker = BatchMaker(sampler, None, NO_AUGMENT, squeeze_axis=2)
    x, y = maker.tiles(sampler.tiles())
    assert x.shape == (4, 1, 16, 16) and y.shape == (4, 16, 16)


def test_evaluate_and_predict_tiles(tmp_path: Path) -> None:
    sampler = _sampler(tmp_path)
    maker = BatchMaker(sampler, Normalization(mean=(10.0, 30.0), std=(1.0, 1.0)), NO_AUGMENT)

    class RowModel(torch.nn.Module):
        """Class 1 in the lower half of each 32-row tile."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = torch.arange(x.shape[2]).view(1, 1, -1, 1).float()
            score = (rows >= x.shape[2] // 2).float().expand(x.shape[0], 1, -1, x.shape[3])
            return torch.cat([1 - score, score], dim=1)

    tiles = sampler.tiles()
    cm = evaluate(RowModel(), maker, tiles, 2, 255, batch_size=3)
    assert cm.pixels == 64 * 64
    assert 0.4 < cm.accuracy() < 0.6  # right on half of the tiles' rows
    preds = predict_tiles(RowModel(), maker, tiles, batch_size=3)
    assert len(preds) == len(tiles) and preds[0].dtype == np.uint8
