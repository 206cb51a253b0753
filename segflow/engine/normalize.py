"""Global per-channel normalization from the model's metadata (never per tile)."""

from __future__ import annotations

import numpy as np
import torch

from segflow.models.meta import Normalization


def normalize(
    raw: np.ndarray,
    valid: np.ndarray,
    norm: Normalization | None,
    out: torch.Tensor | None = None,
) -> np.ndarray:
    """``(C, *S)`` raw values -> float32 model input; nodata and NaN become 0.

    Zero is the mean of the training data after normalization, the most
    neutral value a model can see where there is nothing to see. The result
    is written into ``out`` (float32, same shape, a view is fine) when given.
    """
    source = raw if raw.dtype.isnative else raw.astype(raw.dtype.newbyteorder("="))
    if source.dtype == np.uint16 or source.dtype == np.uint32:
        source = source.astype(np.int64 if source.dtype == np.uint32 else np.int32)
    if any(step < 0 for step in source.strides):
        source = source.copy()
    values = torch.from_numpy(source)
    x = values.to(torch.float32) if out is None else out.copy_(values)
    if norm is not None:
        channel_shape = (-1,) + (1,) * (x.ndim - 1)

        def per_channel(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).reshape(channel_shape)

        if norm.scale is not None:
            x.mul_(per_channel(norm.scale))
        if norm.offset is not None:
            x.add_(per_channel(norm.offset))
        if norm.clip is not None:
            x.clamp_(norm.clip[0], norm.clip[1])
        x.sub_(per_channel(norm.mean)).div_(per_channel(norm.std))
    if np.issubdtype(raw.dtype, np.floating):
        torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)
    if not valid.all():
        x[:, torch.from_numpy(~valid)] = 0.0
    return x.numpy()
