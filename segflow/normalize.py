"""Global per-channel normalization from the model's metadata (never per tile)."""

from __future__ import annotations

import numpy as np

from segflow.models.meta import Normalization


def normalize(raw: np.ndarray, valid: np.ndarray, norm: Normalization | None) -> np.ndarray:
    """``(C, *S)`` raw values -> float32 model input; nodata and NaN become 0.

    Zero is the mean of the training data after normalization, the most
    neutral value a model can see where there is nothing to see.
    """
    x = raw.astype(np.float32, copy=True)
    if norm is not None:
        channel_shape = (-1,) + (1,) * (x.ndim - 1)
        if norm.scale is not None:
            x *= np.asarray(norm.scale, np.float32).reshape(channel_shape)
        if norm.offset is not None:
            x += np.asarray(norm.offset, np.float32).reshape(channel_shape)
        if norm.clip is not None:
            np.clip(x, norm.clip[0], norm.clip[1], out=x)
        x -= np.asarray(norm.mean, np.float32).reshape(channel_shape)
        x /= np.asarray(norm.std, np.float32).reshape(channel_shape)
    if np.issubdtype(raw.dtype, np.floating):
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    x[:, ~valid] = 0.0
    return x
