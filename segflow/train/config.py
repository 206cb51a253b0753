"""What a training run is given and what it gives back.

:class:`TrainConfig` is the one typed value every entry point builds (the
``segflow train`` command, the Prefect flow, Python callers); the loop and the
model-file writer both read it, so it lives apart from either. It imports no
torch: the command checks its options before paying for torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segflow.errors import ConfigError
from segflow.models.meta import ClassInfo
from segflow.train.augment import AugmentConfig

Log = Callable[[str], None]

DEFAULT_IGNORE_INDEX = 255  # the mask value that is not trained on

# the settings a checkpoint must share with the run that resumes it
_RESUME_KEYS = (
    "images",
    "masks",
    "val_images",
    "val_masks",
    "val_fraction",
    "arch",
    "encoder",
    "arch_kwargs",
    "slice_axis",
    "bands",
    "patch_size",
    "batch_size",
    "steps_per_epoch",
    "seed",
    "ignore_index",
    "balance",
)
_AT_LEAST_ONE = ("batch_size", "epochs", "steps_per_epoch", "val_patches", "stats_windows")


@dataclass
class TrainConfig:
    """Everything one training run needs; recorded (as JSON) in the model's provenance."""

    images: list[Path]
    masks: list[Path]
    output: Path
    val_images: list[Path] = field(default_factory=list)
    val_masks: list[Path] = field(default_factory=list)
    val_fraction: float = 0.1  # held out along axis 0 of each input when no validation pairs
    classes: list[ClassInfo] | None = None  # None: class0..K-1 with K from the masks
    arch: str = "unet2d"
    encoder: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    slice_axis: int = 2  # 2-D model on volumes: train on slices across this axis
    orientation: str | None = None  # volumes: axis codes to train in (default: the first input's)
    bands: tuple[int, ...] | None = None
    nodata: float | None = None
    patch_size: int | tuple[int, ...] | None = None  # model axes; default 256 (2-D) / 64 (3-D)
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 100
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    ignore_index: int = DEFAULT_IGNORE_INDEX
    balance: bool = False
    class_weights: str | list[float] = "none"  # "none", "auto" (inverse sqrt frequency) or values
    dice_weight: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    encoder_weights: Path | None = None
    freeze_encoder_epochs: int = 0
    patience: int | None = None  # early stopping: epochs without mIoU gain
    min_delta: float = 1e-3
    val_patches: int = 64
    checkpoint_dir: Path | None = None  # default: <output>.ckpt
    resume: bool = False
    seed: int = 0
    threads: int | None = None
    stats_windows: int = 48
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    clip_percentiles: tuple[float, float] | None = None
    time_limit_s: float | None = None
    time_clock: str = "wall"  # "wall" seconds, or "cpu" seconds of this process (all threads)
    infer_patch: int | tuple[int, ...] | None = None  # hint written into the model file
    # recorded in the model file instead of the training inputs' own pixel size
    spacing: tuple[float, ...] | None = None  # volumes: mm per model axis (one value: every axis)
    resolution: float | None = None  # rasters: ground metres per pixel
    overlap: float = 0.25
    half: bool = True  # store float16 weights when that leaves the labels unchanged
    channels_last: bool = True  # memory layout for training on CPUs (oneDNN runs it faster)

    def checkpoint_folder(self) -> Path:
        return self.checkpoint_dir or self.output.with_name(self.output.name + ".ckpt")

    def fingerprint(self) -> str:
        """A digest of the settings a resumed run must share with its checkpoint."""
        payload = {k: getattr(self, k) for k in _RESUME_KEYS}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def check(self) -> None:
        """One-line ConfigError for values no run can use."""
        for name in _AT_LEAST_ONE:
            if int(getattr(self, name)) < 1:
                raise ConfigError(
                    f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}"
                )
        if self.time_clock not in ("wall", "cpu"):
            raise ConfigError(f"time clock must be 'wall' or 'cpu', got {self.time_clock!r}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.freeze_encoder_epochs < 0:
            raise ConfigError("frozen-encoder epochs cannot be negative")
        self._check_resolution()
        if self.output.suffix != ".safetensors":
            raise ConfigError(f"the model file must end in .safetensors, got {self.output.name}")

    def _check_resolution(self) -> None:
        if self.spacing is not None and (
            not self.spacing or not all(0 < s < math.inf for s in self.spacing)
        ):
            raise ConfigError(
                f"spacing takes positive numbers like 1.5 or 1.5,1.5,3, got {list(self.spacing)}"
            )
        if self.resolution is not None and not 0 < self.resolution < math.inf:
            raise ConfigError(f"resolution must be a positive number, got {self.resolution}")
        if self.spacing is not None and self.resolution is not None:
            raise ConfigError("give --spacing (volumes) or --resolution (rasters), not both")


@dataclass
class EpochRecord:
    epoch: int
    step: int
    loss: float
    lr: float
    seconds: float
    metrics: dict[str, Any]
    frozen_encoder: bool


@dataclass
class TrainResult:
    model_path: Path
    sha256: str
    epochs: int
    steps: int
    best_epoch: int
    metrics: dict[str, Any]
    history: list[EpochRecord]
    stopped: str  # "epochs", "early_stopping", "time_limit"
    seconds: float
    weights_dtype: str

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (what the command prints and the flow returns)."""
        return {
            "model": str(self.model_path),
            "sha256": self.sha256,
            "epochs": self.epochs,
            "steps": self.steps,
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "weights_dtype": self.weights_dtype,
            "miou": self.metrics.get("miou"),
            "metrics": self.metrics,
        }
