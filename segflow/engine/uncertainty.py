"""Per-pixel uncertainty: the normalized entropy of the blended class probabilities, as uint8.

For a pixel's blended class probabilities ``p = (p_1 .. p_K)`` (those its label
is the argmax of; an ensemble's weighted mean, one model's softmax of its
blended logits)::

    u = rint(254 * clip(H(p) / ln K, 0, 1)),   H(p) = -sum_k p_k ln p_k,   0 ln 0 = 0

0 where one class holds all the probability, 254 where all K classes are equally
likely, 255 where the input is nodata. One sigmoid channel ``q`` is the two
classes ``(1 - q, q)``, K = 2 (the binary entropy in bits). ``rint`` rounds half
to even, as the uint8 probabilities do.

Computed in float64 with NumPy, a slab of rows at a time (no second float copy
of a region). NumPy's exp and log give a value the same result wherever it lies
in a contiguous array; torch's softmax over the class axis does not (it rounds
by the array's shape), so where the blend holds logits the softmax is taken here,
in float64, and a pixel's uncertainty does not depend on the region or chunk it
was computed in.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

from segflow.engine.blend import Accumulator

NODATA = 255
LEVELS = 254
SLAB_VALUES = 2**20  # float64 values of one slab's class scores (8 MB)

Float64 = npt.NDArray[np.float64]
UInt8 = npt.NDArray[np.uint8]


def quantize(normalized: Float64) -> UInt8:
    """``H / ln K`` as stored: rint(254 * h), h clipped to [0, 1]; 255 where it is NaN."""
    nodata = np.isnan(normalized)
    scaled = np.rint(np.clip(np.where(nodata, 0.0, normalized), 0.0, 1.0) * LEVELS)
    stored: UInt8 = np.asarray(scaled, dtype=np.uint8)
    stored[nodata] = NODATA
    return stored


def probability_entropy(probabilities: npt.NDArray[np.floating]) -> Float64:
    """``H(p) / ln K`` of class probabilities ``(K, ...)``; NaN where any is NaN."""
    p = _classes(np.ascontiguousarray(probabilities, dtype=np.float64))
    p = np.maximum(p, 0.0)  # NaN stays NaN
    entropy = np.zeros(p.shape[1:], np.float64)
    for k in range(p.shape[0]):  # classes in order: the same sum for every pixel
        entropy -= p[k] * np.log(np.maximum(p[k], np.finfo(np.float64).tiny))
    return entropy / math.log(p.shape[0])


def logit_entropy(logits: Float64) -> Float64:
    """``H(softmax(z)) / ln K`` of mean logits ``(K, ...)`` (one channel: a sigmoid).

    With ``e_k = exp(z_k - max z)`` and ``S = sum e_k``, ``H = ln S - sum e_k (z_k - max z) / S``:
    one exp per class and one log per pixel. ``logits`` is overwritten (it is a slab's copy).
    """
    if logits.shape[0] == 1:
        return probability_entropy(1.0 / (1.0 + np.exp(-logits)))
    shifted = logits
    shifted -= logits.max(axis=0)
    exps = np.exp(shifted)
    total = exps[0].copy()
    weighted = exps[0] * shifted[0]
    for k in range(1, logits.shape[0]):  # classes in order: the same sum for every pixel
        total += exps[k]
        np.multiply(exps[k], shifted[k], out=shifted[k])
        weighted += shifted[k]
    entropy: Float64 = np.log(total)
    entropy -= np.divide(weighted, total, out=weighted)
    entropy /= math.log(logits.shape[0])
    return entropy


def blend_uncertainty(accumulator: Accumulator) -> UInt8:
    """The uncertainty of a region from its blend, a slab of rows at a time; 255 where no
    patch contributed. The blend must track its weights."""
    if accumulator.weights is None:
        raise RuntimeError("uncertainty needs an accumulator that tracks its weights")
    sums, weights = accumulator.logits, accumulator.weights
    shape = tuple(weights.shape)
    out = np.empty(shape, np.uint8)
    for rows in _slabs(sums.shape[0], shape):
        w = weights[rows].cpu().numpy().astype(np.float64)
        mean = sums[:, rows].cpu().numpy().astype(np.float64)
        mean /= np.maximum(w, 1e-12)
        if accumulator.scores == "probabilities":
            normalized = probability_entropy(mean)
        else:
            normalized = logit_entropy(mean)
        normalized[w == 0] = np.nan
        out[rows] = quantize(normalized)
    return out


def probabilities_uncertainty(probabilities: torch.Tensor | npt.NDArray[np.floating]) -> UInt8:
    """The uncertainty of class probabilities ``(K, *shape)`` (NaN: nodata), slab by slab."""
    values = probabilities.numpy() if isinstance(probabilities, torch.Tensor) else probabilities
    shape = tuple(values.shape[1:])
    out = np.empty(shape, np.uint8)
    for rows in _slabs(values.shape[0], shape):
        out[rows] = quantize(probability_entropy(values[:, rows]))
    return out


def _classes(p: Float64) -> Float64:
    """One sigmoid channel ``q`` as the two classes ``(1 - q, q)``."""
    return np.concatenate([1.0 - p, p]) if p.shape[0] == 1 else p


def _slabs(classes: int, shape: tuple[int, ...]) -> list[slice]:
    """Row ranges of the first axis, each about SLAB_VALUES class scores."""
    if not shape:
        return []
    per_row = max(1, max(classes, 2) * math.prod(shape[1:]))
    step = max(1, SLAB_VALUES // per_row)
    return [slice(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]


__all__ = [
    "LEVELS",
    "NODATA",
    "blend_uncertainty",
    "logit_entropy",
    "probabilities_uncertainty",
    "probability_entropy",
    "quantize",
]
