"""The model file a training run writes: metadata with provenance, weights in float16 when safe.

Everything ``segflow run`` needs travels in the file: architecture, classes
with colours, global normalization, a patch-size hint, the orientation
volumes were trained in, the spacing or ground resolution of the training data, and where the model came from (data checksums, seed,
epochs, validation scores, the full training configuration).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from torch import nn

from segflow.models.meta import ModelMeta, Normalization
from segflow.train.batches import BatchMaker, Tile, predict_tiles
from segflow.train.config import EpochRecord, TrainConfig
from segflow.train.resolution import TrainingResolution
from segflow.train.sampling import OpenPair

FP16_AGREEMENT = 0.9999  # share of identical labels a float16 round trip must keep


def storage_dtype(
    module: nn.Module, config: TrainConfig, maker: BatchMaker, tiles: Sequence[Tile]
) -> tuple[str, float | None]:
    """float16 when a half-precision round trip predicts the same labels (>= 99.99 %)."""
    if not config.half:
        return "float32", None
    rounded = copy.deepcopy(module).half().float().eval()
    a = predict_tiles(module, maker, tiles, config.batch_size)
    b = predict_tiles(rounded, maker, tiles, config.batch_size)
    agree = float(np.mean([np.mean(x == y) for x, y in zip(a, b, strict=True)])) if a else 1.0
    return ("float16" if agree >= FP16_AGREEMENT else "float32"), round(agree, 6)


def build_meta(
    meta: ModelMeta,
    config: TrainConfig,
    normalization: Normalization,
    patch: tuple[int, ...],
    model_dims: int,
    orientation: str | None,
    best: dict[str, Any],
    history: list[EpochRecord],
    steps: int,
    stopped: str,
    pairs: Sequence[OpenPair],
    *,
    resolution: TrainingResolution | None = None,
) -> ModelMeta:
    """The trained model's metadata: ``meta`` plus normalization, hints, the spacing or
    resolution it was trained at, and provenance."""
    from segflow.version import __version__

    if config.infer_patch is not None:
        hint = config.infer_patch
        hint_t = (hint,) * model_dims if isinstance(hint, int) else tuple(hint)
    else:
        hint_t = tuple(max(p, 512) for p in patch) if model_dims == 2 else patch
    data = [
        {"image": str(p.image.path), "mask": str(p.mask.path), "image_sha256": p.image.checksum()}
        for p in {id(p.image): p for p in pairs}.values()
    ]
    provenance = {
        **meta.provenance,
        "trained_with": f"segflow {__version__} train",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data,
        "seed": config.seed,
        "epochs": len(history),
        "steps": steps,
        "best_epoch": int(best["epoch"]),
        "stopped": stopped,
        "validation": best["metrics"],
        "train_patch": list(patch),
        "batch_size": config.batch_size,
        "slice_axis": config.slice_axis
        if model_dims == 2 and len(pairs[0].spatial_shape) == 3
        else None,
        "config": json.loads(json.dumps(asdict(config), default=str)),
    }
    if resolution is not None:
        provenance["resolution"] = resolution.provenance
    return ModelMeta.model_validate(
        {
            **meta.model_dump(),
            "normalization": normalization.model_dump(),
            "patch_size": hint_t,
            "overlap": config.overlap,
            "orientation": orientation,
            **(resolution.meta_fields() if resolution is not None else {}),
            "provenance": provenance,
        }
    )


def half_copy(module: nn.Module) -> nn.Module:
    """A float16 copy for storage (loading casts back to the architecture's float32)."""
    return copy.deepcopy(module).half()
