"""Normalization statistics: global, from windows, written into the model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segflow.errors import ConfigError, InputDataError
from segflow.io.open import open_source
from segflow.models import load_model, new_model, save_model
from segflow.models.meta import Normalization
from segflow.train.stats import (
    channel_stats,
    compute_normalization,
    label_counts,
    set_model_normalization,
)

from ..conftest import write_nifti, write_tif


def _scene(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    data = np.stack([rng.normal(1000, 50, (96, 80)), rng.normal(3000, 400, (96, 80))]).astype(
        np.uint16
    )
    data[:, :10, :10] = 0  # nodata
    return write_tif(tmp_path / "s.tif", data, nodata=0), data


def test_whole_image_window_gives_the_exact_global_statistics(tmp_path: Path) -> None:
    path, data = _scene(tmp_path)
    stats = channel_stats([open_source(path)], windows=1, window=(96, 80))
    valid = (data != 0).any(axis=0)
    values = data[:, valid].astype(np.float64)
    np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats.std, values.std(axis=1), rtol=1e-6)
    assert stats.pixels == int(valid.sum())


def test_windows_estimate_the_statistics(tmp_path: Path) -> None:
    path, data = _scene(tmp_path)
    norm = compute_normalization([open_source(path)], windows=12, window=32, seed=3)
    valid = (data != 0).any(axis=0)
    np.testing.assert_allclose(norm.mean, data[:, valid].mean(axis=1), rtol=0.02)
    np.testing.assert_allclose(norm.std, data[:, valid].std(axis=1), rtol=0.1)
    assert norm.scale is None and norm.clip is None


def test_scale_offset_and_clip(tmp_path: Path) -> None:
    path, _ = _scene(tmp_path)
    norm = compute_normalization(
        [open_source(path)], windows=4, window=64, scale=[1e-4], offset=[0.0, 0.1],
        clip_percentiles=(1.0, 99.0),
    )  # fmt: skip
    assert norm.scale == (1e-4, 1e-4) and norm.offset == (0.0, 0.1)
    assert norm.clip is not None and norm.clip[0] < norm.clip[1]
    assert all(norm.clip[0] <= m <= norm.clip[1] for m in norm.mean)


def test_volume_statistics_and_errors(tmp_path: Path) -> None:
    vol = np.full((20, 20, 10), -1000, dtype=np.int16)
    vol[5:15, 5:15, :] = 40
    src = open_source(write_nifti(tmp_path / "v.nii.gz", vol, np.eye(4)))
    stats = channel_stats([src], windows=1, window=(20, 20, 10))
    assert stats.mean[0] == pytest.approx(float(vol.mean()))
    empty = open_source(write_tif(tmp_path / "e.tif", np.zeros((1, 8, 8), np.uint8), nodata=0))
    with pytest.raises(InputDataError, match="no valid pixels"):
        channel_stats([empty], windows=2)
    two_bands = open_source(write_tif(tmp_path / "t.tif", np.ones((2, 8, 8), np.uint8)))
    with pytest.raises(ConfigError, match="channel count"):
        channel_stats([src, two_bands])


def test_label_counts(tmp_path: Path) -> None:
    mask = np.zeros((1, 40, 40), dtype=np.uint8)
    mask[0, :10] = 1
    mask[0, 10:12] = 255
    src = open_source(write_tif(tmp_path / "m.tif", mask, nodata=255))
    counts = label_counts([src], 3, windows=1, window=40)
    assert counts.tolist() == [28 * 40, 10 * 40, 0]


def test_normalization_is_written_into_the_model_file(tmp_path: Path) -> None:
    module, meta = new_model("pixel", in_channels=2, classes=["a", "b"])
    path = tmp_path / "m.safetensors"
    save_model(module, meta, path)
    norm = Normalization(mean=(1.0, 2.0), std=(3.0, 4.0))
    set_model_normalization(path, norm)
    assert load_model(path).meta.normalization == norm
    with pytest.raises(ConfigError, match="normalization has 1 channels"):
        set_model_normalization(path, Normalization(mean=(1.0,), std=(1.0,)))
