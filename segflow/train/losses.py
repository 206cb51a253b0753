"""Training losses: pixel-wise cross-entropy with an ignore index, optional soft Dice and class weights.

Ignored pixels (nodata, unlabeled) contribute nothing to either term: not to
the cross-entropy mean and not to the Dice sums, so a patch that is half
nodata trains exactly like its valid half.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segflow.errors import ConfigError
from segflow.train.config import DEFAULT_IGNORE_INDEX


def class_weights_from_counts(
    counts: Sequence[int] | np.ndarray, power: float = 0.5
) -> list[float]:
    """Weights ``~ 1 / frequency**power``, scaled to mean 1; classes never seen get weight 1.

    ``power=0.5`` (inverse square root) lifts rare classes without letting a
    handful of pixels dominate the loss, which plain inverse frequency does.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or (c < 0).any():
        raise ConfigError(f"class counts must be non-negative numbers per class, got {counts!r}")
    seen = c > 0
    if not seen.any():
        return [1.0] * c.size
    freq = np.where(seen, c / c[seen].sum(), 1.0)
    w = np.where(seen, freq ** (-power), 0.0)
    w[seen] /= w[seen].mean()
    w[~seen] = 1.0
    return [float(v) for v in w]


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int, eps: float = 1.0
) -> torch.Tensor:
    """1 - mean over classes of the soft Dice, over valid pixels of the whole batch.

    Classes absent from both the batch truth and (softly) the prediction get a
    Dice of 1 through ``eps``, so they neither help nor hurt.
    """
    num_classes = logits.shape[1]
    valid = target != ignore_index
    probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, num_classes).movedim(-1, 1).to(probs.dtype) * valid.unsqueeze(1)
    dims = [0, *range(2, logits.ndim)]
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice.mean()


class SegmentationLoss(nn.Module):
    """``ce_weight * CE + dice_weight * (1 - soft Dice)`` with an ignore index.

    ``class_weights`` weight the cross-entropy per class. When a batch has no
    valid pixel at all the loss is 0 (with a gradient graph), not NaN.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        class_weights: Sequence[float] | None = None,
        ce_weight: float = 1.0,
        dice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ConfigError(
                f"ignore index {ignore_index} is a class index (0..{num_classes - 1}); "
                "use a value outside the classes, e.g. 255"
            )
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ConfigError(
                f"loss weights must be >= 0 and not both 0, got ce={ce_weight}, dice={dice_weight}"
            )
        weights = None
        if class_weights is not None:
            if len(class_weights) != num_classes:
                raise ConfigError(
                    f"{len(class_weights)} class weights for {num_classes} classes; give one each"
                )
            if any(w < 0 for w in class_weights):
                raise ConfigError("class weights must be non-negative")
            weights = torch.tensor([float(w) for w in class_weights], dtype=torch.float32)
        self.register_buffer("class_weights", weights)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.num_classes:
            raise ConfigError(
                f"the model gives {logits.shape[1]} class scores, the loss expects {self.num_classes}"
            )
        target = target.long()
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return logits.sum() * 0.0
        total = logits.new_zeros(())
        if self.ce_weight:
            weight = self.class_weights
            ce = F.cross_entropy(
                logits.float(),
                target,
                weight=weight.to(logits.device) if isinstance(weight, torch.Tensor) else None,
                ignore_index=self.ignore_index,
            )
            total = total + self.ce_weight * ce
        if self.dice_weight:
            dice = soft_dice_loss(logits, target, ignore_index=self.ignore_index)
            total = total + self.dice_weight * dice
        return total
