"""Augmentations keep image and mask aligned (2-D and 3-D); jitter touches valid pixels only."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.errors import ConfigError
from segflow.train.augment import (
    NO_AUGMENT,
    AugmentConfig,
    augment,
    augment_geometry,
    jitter_intensity,
    rotation_planes,
)


def _coded(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Image channels hold each pixel's own coordinates; the mask is a function of them."""
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    image = np.stack(grids).astype(np.float32)
    mask = _label_of(image)
    return image, mask


def _label_of(image: np.ndarray) -> np.ndarray:
    flat = np.zeros(image.shape[1:], dtype=np.int64)
    for c in range(image.shape[0]):
        flat = flat * 131 + image[c].astype(np.int64)
    return flat % 251


@pytest.mark.parametrize("shape", [(8, 8), (6, 6, 6), (4, 6, 6)])
def test_geometry_keeps_image_and_mask_aligned(shape: tuple[int, ...]) -> None:
    image, mask = _coded(shape)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(40):
        img, msk = augment_geometry(image, mask, rng, AugmentConfig())
        assert img.shape[1:] == msk.shape and img.flags.c_contiguous and msk.flags.c_contiguous
        np.testing.assert_array_equal(_label_of(img), msk)
        # every pixel still there exactly once (a permutation of the patch)
        assert sorted(msk.ravel().tolist()) == sorted(mask.ravel().tolist())
        seen.add(img.tobytes())
    assert len(seen) > 4  # it does transform


def test_rotations_only_in_square_planes() -> None:
    assert rotation_planes((4, 6, 6)) == [(1, 2)]
    assert rotation_planes((8, 8)) == [(0, 1)]
    assert rotation_planes((6, 6, 6), [(0, 1)]) == [(0, 1)]
    with pytest.raises(ConfigError, match="square patch"):
        rotation_planes((4, 6, 6), [(0, 1)])


def test_jitter_changes_valid_pixels_per_channel_and_never_the_mask() -> None:
    rng = np.random.default_rng(0)
    image = np.ones((3, 5, 5), dtype=np.float32)
    valid = np.ones((5, 5), dtype=bool)
    valid[0, :] = False
    image[:, ~valid] = 0.0
    mask = np.arange(25).reshape(5, 5)
    out, out_mask = augment(image, mask, valid, rng, AugmentConfig(flip=False, rotate90=False))
    np.testing.assert_array_equal(out_mask, mask)
    assert (out[:, 0, :] == 0).all()  # nodata stays neutral
    for c in range(3):  # one gain and one bias per channel: valid pixels stay equal to each other
        assert np.ptp(out[c][valid]) == pytest.approx(0.0, abs=1e-6)
    assert not np.allclose(out[:, valid], 1.0)
    assert out.dtype == np.float32


def test_noise_and_no_augment() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((1, 16, 16), dtype=np.float32)
    valid = np.ones((16, 16), dtype=bool)
    noisy = jitter_intensity(image, valid, rng, AugmentConfig(gain=0, bias=0, noise=0.5))
    assert 0.3 < float(noisy.std()) < 0.7
    assert not NO_AUGMENT.enabled
    same, _ = augment(image, np.zeros((16, 16)), valid, rng, NO_AUGMENT)
    np.testing.assert_array_equal(same, image)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="gain must be below 1"):
        AugmentConfig(gain=1.5)
    with pytest.raises(ConfigError, match="differ in shape"):
        augment_geometry(
            np.zeros((1, 4, 4)), np.zeros((4, 5)), np.random.default_rng(0), AugmentConfig()
        )
