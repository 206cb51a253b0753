"""Global per-channel normalization: units, clipping, statistics, nodata and NaN."""

from __future__ import annotations

import numpy as np
import torch

from segflow.engine.normalize import normalize
from segflow.models.meta import Normalization


def test_scale_offset_and_clip_come_before_the_training_statistics():
    norm = Normalization(
        mean=(0.5, 1.0), std=(0.25, 2.0), scale=(0.01, 1.0), offset=(0.0, -3.0), clip=(0.0, 1.0)
    )
    raw = np.array([[[0, 50, 100, 200]], [[3, 3, 4, 9]]], dtype=np.int16)
    got = normalize(raw, np.ones((1, 4), bool), norm)
    physical = np.clip(raw * np.array([0.01, 1.0])[:, None, None] + [[[0.0]], [[-3.0]]], 0, 1)
    expected = (physical - np.array([0.5, 1.0])[:, None, None]) / np.array([0.25, 2.0])[
        :, None, None
    ]
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-6)
    assert got.dtype == np.float32


def test_nodata_and_nan_become_zero_the_training_mean():
    norm = Normalization(mean=(10.0,), std=(2.0,))
    raw = np.array([[[10.0, np.nan, 14.0, np.inf]]], dtype=np.float32)
    valid = np.array([[True, True, False, True]])
    got = normalize(raw, valid, norm)
    assert got.tolist() == [[[0.0, 0.0, 0.0, 0.0]]]


def test_unsigned_and_big_endian_inputs_keep_their_values():
    for dtype in (">u2", "<u2", ">i4", "<u4"):
        raw = np.array([[[0, 1, 60000]]], dtype=dtype)
        got = normalize(raw, np.ones((1, 3), bool), None)
        assert got.tolist() == [[[0.0, 1.0, 60000.0]]]


def test_the_result_lands_in_a_strided_view_of_a_batch():
    norm = Normalization(mean=(1.0, 2.0, 3.0), std=(1.0, 1.0, 1.0))
    raw = np.arange(3 * 5 * 6, dtype=np.uint8).reshape(3, 5, 6)
    batch = torch.full((2, 3, 8, 9), -7.0)
    normalize(raw[:, ::-1], np.ones((5, 6), bool), norm, out=batch[1, :, 2:7, 3:9])
    expected = raw[:, ::-1].astype(np.float32) - np.array([1.0, 2.0, 3.0])[:, None, None]
    np.testing.assert_array_equal(batch[1, :, 2:7, 3:9].numpy(), expected)
    assert (batch[0] == -7.0).all() and (batch[1, :, :2] == -7.0).all()  # nothing else
