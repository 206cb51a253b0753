"""Training segflow models: patch sampling from large inputs, augmentation, losses, metrics,
normalization statistics and the training loop that writes a segflow model file."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# eager (numpy only): the function ``augment`` must win over the submodule of that name
from segflow.train.augment import NO_AUGMENT, AugmentConfig, augment

if TYPE_CHECKING:
    from segflow.train.config import EpochRecord, TrainConfig, TrainResult
    from segflow.train.loop import train
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

# the configuration types import no torch: a command checks its options before paying for it
_HOMES = {
    "EpochRecord": "config",
    "TrainConfig": "config",
    "TrainResult": "config",
    "train": "loop",
    "SegmentationLoss": "losses",
    "class_weights_from_counts": "losses",
    "ConfusionMatrix": "metrics",
    "confusion_matrix": "metrics",
    "PatchSampler": "sampling",
    "TrainPair": "sampling",
    "find_pairs": "sampling",
    "open_pair": "sampling",
    "compute_normalization": "stats",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'segflow.train' has no attribute {name!r}")
    value = getattr(import_module(f"segflow.train.{home}"), name)
    globals()[name] = value
    return value
