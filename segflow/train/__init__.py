"""Training segflow models: patch sampling from large inputs, augmentation, losses, metrics,
normalization statistics and the training loop that writes a segflow model file."""

from __future__ import annotations

from segflow.train.augment import NO_AUGMENT, AugmentConfig, augment
from segflow.train.loop import EpochRecord, TrainConfig, TrainResult, train
from segflow.train.losses import SegmentationLoss, class_weights_from_counts
from segflow.train.metrics import ConfusionMatrix, confusion_matrix
from segflow.train.sampling import PatchSampler, TrainPair, find_pairs, open_pair
from segflow.train.stats import compute_normalization

__all__ = [
    "NO_AUGMENT",
    "AugmentConfig",
    "ConfusionMatrix",
    "EpochRecord",
    "PatchSampler",
    "SegmentationLoss",
    "TrainConfig",
    "TrainPair",
    "TrainResult",
    "augment",
    "class_weights_from_counts",
    "compute_normalization",
    "confusion_matrix",
    "find_pairs",
    "open_pair",
    "train",
]
