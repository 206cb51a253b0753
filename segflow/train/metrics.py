"""Segmentation accuracy from a confusion matrix: per-class IoU and Dice, mIoU, accuracy.

Everything derives from one ``(K, K)`` integer confusion matrix (rows: truth,
columns: prediction) that is accumulated patch by patch, so a whole scene is
scored in bounded memory and the result does not depend on the tiling.
A class that appears neither in the truth nor in the prediction has no IoU
(NaN) and is left out of the means rather than counted as perfect or as zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from segflow.errors import ConfigError

IntArray = npt.NDArray[np.integer[Any]]
F64 = npt.NDArray[np.float64]


def confusion_matrix(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    num_classes: int,
    *,
    ignore_index: int | None = None,
) -> npt.NDArray[np.int64]:
    """``(K, K)`` counts of (truth, prediction) pairs; ``ignore_index`` truth pixels are skipped.

    Truth values outside ``0..K-1`` (other than ``ignore_index``) are refused:
    they mean the mask and the class list disagree.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    p = np.asarray(pred).ravel()
    t = np.asarray(truth).ravel()
    if p.shape != t.shape:
        raise ConfigError(
            f"prediction and truth differ in size ({p.size} vs {t.size} pixels); "
            "score arrays of the same shape"
        )
    keep = np.ones(t.shape, dtype=bool) if ignore_index is None else t != ignore_index
    t, p = t[keep].astype(np.int64), p[keep].astype(np.int64)
    bad_t = (t < 0) | (t >= num_classes)
    if bad_t.any():
        raise ConfigError(
            f"truth holds value {int(t[bad_t][0])} outside the {num_classes} classes; "
            "set the ignore index or fix the class list"
        )
    bad_p = (p < 0) | (p >= num_classes)
    if bad_p.any():
        raise ConfigError(
            f"prediction holds value {int(p[bad_p][0])} outside the {num_classes} classes"
        )
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(cm: IntArray) -> F64:
    """TP / (TP + FP + FN) per class; NaN where the class is absent from truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        out: F64 = np.where(union > 0, tp / union, np.nan)
    return out


def dice_per_class(cm: IntArray) -> F64:
    """2 TP / (2 TP + FP + FN) per class; NaN where the class is absent from both."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: F64 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return out


def mean_iou(cm: IntArray) -> float:
    """Mean IoU over the classes that occur (in truth or prediction); NaN if none does."""
    values = iou_per_class(cm)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def overall_accuracy(cm: IntArray) -> float:
    """Share of scored pixels predicted right; NaN when nothing was scored."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


@dataclass
class ConfusionMatrix:
    """Accumulates a confusion matrix over many patches; reports the usual scores."""

    num_classes: int
    ignore_index: int | None = None
    matrix: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {self.num_classes}")
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: npt.ArrayLike, truth: npt.ArrayLike) -> None:
        self.matrix += confusion_matrix(
            pred, truth, self.num_classes, ignore_index=self.ignore_index
        )

    @property
    def pixels(self) -> int:
        return int(self.matrix.sum())

    def iou(self) -> F64:
        return iou_per_class(self.matrix)

    def dice(self) -> F64:
        return dice_per_class(self.matrix)

    def miou(self) -> float:
        return mean_iou(self.matrix)

    def accuracy(self) -> float:
        return overall_accuracy(self.matrix)

    def report(self, names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
        """JSON-ready scores (NaN becomes None), per class under the class names."""
        names = list(names) if names is not None else [f"class{i}" for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ConfigError(f"{len(names)} class names for {self.num_classes} classes")

        def clean(v: float) -> float | None:
            return None if not np.isfinite(v) else round(float(v), 6)

        return {
            "pixels": self.pixels,
            "overall_accuracy": clean(self.accuracy()),
            "miou": clean(self.miou()),
            "mean_dice": clean(float(np.nanmean(self.dice())) if self.pixels else float("nan")),
            "iou": {n: clean(v) for n, v in zip(names, self.iou(), strict=True)},
            "dice": {n: clean(v) for n, v in zip(names, self.dice(), strict=True)},
        }
