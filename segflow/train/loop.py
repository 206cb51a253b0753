"""Training: sample patches, optimise, validate, checkpoint, and write a segflow model file.

One call to :func:`train` goes from image/mask pairs to a model file that
``segflow run`` needs nothing else for: architecture, weights, class names and
colours, global normalization statistics, a patch-size hint and provenance
(data, seed, epochs, validation metrics). Training resumes from the last
completed epoch of its checkpoint folder; sampling is seeded per epoch, so a
resumed run draws the same patches the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segflow.errors import ConfigError
from segflow.models.meta import ClassInfo, ModelMeta, Normalization, default_colors
from segflow.train import checkpoint as ckpt
from segflow.train.augment import NO_AUGMENT, AugmentConfig
from segflow.train.batches import (
    BatchMaker,
    Prefetcher,
    evaluate,
    memory_format,
    squeeze_axis_of,
)
from segflow.train.losses import DEFAULT_IGNORE_INDEX, SegmentationLoss, class_weights_from_counts
from segflow.train.modelfile import build_meta, half_copy, storage_dtype
from segflow.train.progress import ProgressBar
from segflow.train.sampling import (
    OpenPair,
    PatchSampler,
    find_pairs,
    open_pair,
    random_region_in,
    split_holdout,
)
from segflow.train.stats import coerce_window, compute_normalization, label_counts

Log = Callable[[str], None]


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
    overlap: float = 0.25
    half: bool = True  # store float16 weights when that leaves the labels unchanged
    channels_last: bool = True  # memory layout for training on CPUs (oneDNN runs it faster)

    def checkpoint_folder(self) -> Path:
        return self.checkpoint_dir or self.output.with_name(self.output.name + ".ckpt")


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


# ---------------------------------------------------------------------------
# set-up


def _open_pairs(
    config: TrainConfig, model_dims: int | None
) -> tuple[list[OpenPair], list[OpenPair], str | None]:
    train_pairs = find_pairs(config.images, config.masks)
    first = open_pair(train_pairs[0], bands=config.bands, nodata=config.nodata)
    orientation = None
    if first.image.kind == "volume" and model_dims == 3:
        geometry: Any = first.image.geometry
        orientation = config.orientation or "".join(geometry.orientation)
    opened = [
        open_pair(p, bands=config.bands, nodata=config.nodata, orientation=orientation)
        for p in train_pairs
    ]
    if config.val_images or config.val_masks:
        val = [
            open_pair(p, bands=config.bands, nodata=config.nodata, orientation=orientation)
            for p in find_pairs(config.val_images, config.val_masks)
        ]
        return opened, val, orientation
    splits = [split_holdout(p, config.val_fraction) for p in opened]
    return [t for t, _ in splits], [v for _, v in splits], orientation


def _model_dims(arch: str, data_dims: int) -> int:
    from segflow.models import arch_spec

    dims = arch_spec(arch).spatial_dims
    if data_dims in dims:
        return data_dims
    if data_dims == 3 and 2 in dims:
        return 2  # a 2-D model trains on slices of the volumes
    raise ConfigError(
        f"{arch} is a 3-D model but the training inputs are 2-D rasters; use a 2-D arch"
    )


def _patch_shapes(
    config: TrainConfig, data_dims: int, model_dims: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(patch in model axes, patch in sampler axes with a 1 along the slice axis)."""
    default = 64 if model_dims == 3 else 256
    size = config.patch_size or default
    patch = (size,) * model_dims if isinstance(size, int) else tuple(int(v) for v in size)
    if len(patch) != model_dims:
        raise ConfigError(f"patch size {size} has {len(patch)} axes; the model is {model_dims}-D")
    if data_dims == model_dims:
        return patch, patch
    if config.slice_axis not in (0, 1, 2):
        raise ConfigError(f"slice axis must be 0, 1 or 2, got {config.slice_axis}")
    sampler_patch = list(patch)
    sampler_patch.insert(config.slice_axis, 1)
    return patch, tuple(sampler_patch)


def _infer_classes(config: TrainConfig, pairs: Sequence[OpenPair]) -> list[ClassInfo]:
    if config.classes:
        return list(config.classes)
    rng = np.random.default_rng(config.seed)
    top = -1
    for pair in pairs:
        size = coerce_window(None, len(pair.spatial_shape))
        for _ in range(max(1, config.stats_windows // len(pairs))):
            result = pair.mask.read(random_region_in(pair.extent(), size, rng))
            labels = result.data[0][result.valid]
            labels = labels[labels != config.ignore_index]
            if labels.size:
                top = max(top, int(labels.max()))
    if top < 0:
        raise ConfigError("the masks hold no labels in the sampled windows; pass the class names")
    colors = default_colors(top + 1)
    return [ClassInfo(name=f"class{i}", color=colors[i]) for i in range(top + 1)]


def _encoder(module: nn.Module) -> nn.Module | None:
    encoder = getattr(module, "encoder", None)
    if isinstance(encoder, nn.Module):
        return encoder
    down = getattr(module, "down", None)  # segflow's paper U-Net: the contracting path
    return down if isinstance(down, nn.Module) else None


def _set_frozen(module: nn.Module, frozen: bool) -> None:
    encoder = _encoder(module)
    if encoder is None:
        return
    for p in encoder.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        encoder.eval()  # keep pretrained batch-norm statistics while the decoder catches up


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 2 % of the peak."""
    warm = max(1, int(total * config.warmup_fraction))
    if step < warm:
        return config.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _fingerprint(config: TrainConfig) -> str:
    keys = (
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
    payload = {k: getattr(config, k) for k in keys}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------
# the run


def train(
    config: TrainConfig,
    *,
    log: Log | None = None,
    progress: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train a model on ``config``'s pairs and write it to ``config.output``."""
    started = time.perf_counter()
    clock = time.process_time if config.time_clock == "cpu" else time.perf_counter
    clock_start = clock()
    limit = config.time_limit_s

    def out_of_time_fn() -> bool:
        return limit is not None and clock() - clock_start > limit

    say = log or (lambda message: None)
    _check(config)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)

    from segflow.models import load_encoder_weights, new_model

    probe = open_pair(find_pairs(config.images, config.masks)[0], bands=config.bands)
    data_dims = len(probe.spatial_shape)
    model_dims = _model_dims(config.arch, data_dims)
    train_pairs, val_pairs, orientation = _open_pairs(
        config, model_dims if data_dims == 3 else None
    )
    patch, sampler_patch = _patch_shapes(config, data_dims, model_dims)
    classes = _infer_classes(config, train_pairs)
    num_classes = len(classes)
    sampler = PatchSampler(
        train_pairs,
        sampler_patch,
        num_classes,
        ignore_index=config.ignore_index,
        balance=config.balance,
    )
    validator = PatchSampler(
        val_pairs, sampler_patch, num_classes, ignore_index=config.ignore_index
    )
    squeeze = squeeze_axis_of(sampler_patch, patch)

    folder = config.checkpoint_folder()
    state = ckpt.load_state(folder) if config.resume else None
    if state is not None and state.get("fingerprint") != _fingerprint(config):
        raise ConfigError(
            f"the checkpoint in {folder} is from a run with other data or settings; "
            "use the same options, or drop --resume to start afresh"
        )

    if state is not None:
        normalization = Normalization.model_validate(state["normalization"])
    else:
        normalization = compute_normalization(
            [p.image for p in train_pairs],
            windows=config.stats_windows,
            seed=config.seed,
            scale=config.scale,
            offset=config.offset,
            clip_percentiles=config.clip_percentiles,
        )
        say(f"normalization: mean {_fmt(normalization.mean)}, std {_fmt(normalization.std)}")

    band_names = tuple(probe.image.band_names) if probe.image.kind == "raster" else None
    arch_kwargs = dict(config.arch_kwargs)
    if config.arch.lower() == "pixel":  # the one architecture built for either 2-D or 3-D
        arch_kwargs.setdefault("spatial_dims", model_dims)
    module, meta = new_model(
        config.arch,
        encoder=config.encoder,
        in_channels=sampler.channels,
        classes=classes,
        band_names=band_names,
        **arch_kwargs,
    )
    if config.encoder_weights is not None and state is None:
        report = load_encoder_weights(module, config.encoder_weights)
        say(f"encoder weights from {config.encoder_weights.name}: {report.summary()}")
    if config.freeze_encoder_epochs and _encoder(module) is None:
        raise ConfigError(f"{config.arch} has no encoder to freeze; drop --freeze-encoder-epochs")

    weights = _class_weights(config, train_pairs, num_classes)
    loss_fn = SegmentationLoss(
        num_classes,
        ignore_index=config.ignore_index,
        class_weights=weights,
        dice_weight=config.dice_weight,
    )
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    history: list[EpochRecord] = []
    best: dict[str, Any] = {"miou": -1.0, "epoch": 0, "metrics": {}}
    start_epoch, step = 1, 0
    if state is not None:
        ckpt.restore_checkpoint(folder, module, optimizer, state)
        history = [EpochRecord(**r) for r in state["history"]]
        best = state["best"]
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        say(f"resuming after epoch {state['epoch']} (step {step}) from {folder}")

    stride = meta.output_stride
    if any(p % stride for p in patch):
        raise ConfigError(
            f"patch size {patch} must be a multiple of the model's output stride {stride}"
        )
    layout = config.channels_last
    maker = BatchMaker(sampler, normalization, config.augment, squeeze, layout)
    val_maker = BatchMaker(validator, normalization, NO_AUGMENT, squeeze, layout)
    if layout:
        module = module.to(memory_format=memory_format(len(patch) + 2))
    val_tiles = validator.tiles(limit=config.val_patches, seed=config.seed)
    total_steps = config.epochs * config.steps_per_epoch
    # a resumed run continues unless it had stopped early or already ran every epoch
    done = state is not None and (
        state.get("stopped") == "early_stopping" or int(state["epoch"]) >= config.epochs
    )
    stopped = str(state.get("stopped", "epochs")) if state is not None and done else "epochs"
    bar = ProgressBar(progress, total_steps, step)
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if done:
                break
            frozen = epoch <= config.freeze_encoder_epochs
            epoch_started = time.perf_counter()
            module.train()
            _set_frozen(module, frozen)
            rng = np.random.default_rng([config.seed, epoch])
            sampler.reset()
            torch.manual_seed(config.seed * 100003 + epoch)
            prefetcher = Prefetcher(maker, rng, config.batch_size, config.steps_per_epoch)
            losses, lr, step, out_of_time = _run_epoch(
                module, optimizer, loss_fn, prefetcher, config, step, total_steps,
                functools.partial(bar.advance, epoch), out_of_time_fn,
            )  # fmt: skip
            _set_frozen(module, False)
            cm = evaluate(
                module, val_maker, val_tiles, num_classes, config.ignore_index, config.batch_size
            )
            metrics = cm.report([c.name for c in classes])
            record = EpochRecord(
                epoch=epoch,
                step=step,
                loss=float(np.mean(losses)) if losses else float("nan"),
                lr=lr,
                seconds=round(time.perf_counter() - epoch_started, 2),
                metrics=metrics,
                frozen_encoder=frozen,
            )
            history.append(record)
            miou = metrics["miou"] if metrics["miou"] is not None else 0.0
            improved = miou > float(best["miou"]) + config.min_delta or best["epoch"] == 0
            if improved:
                best = {"miou": miou, "epoch": epoch, "metrics": metrics}
                ckpt.save_weights(folder / ckpt.BEST, module)
            say(
                f"epoch {epoch}/{config.epochs}: loss {record.loss:.4f}, val mIoU {miou:.4f}, "
                f"accuracy {metrics['overall_accuracy']}, {record.seconds:.1f} s"
                + (" (encoder frozen)" if frozen else "")
            )
            if on_epoch is not None:
                on_epoch(record)
            patience_out = (
                config.patience is not None and epoch - int(best["epoch"]) >= config.patience
            )
            finished = out_of_time or patience_out or epoch == config.epochs
            if out_of_time:
                stopped = "time_limit"
            elif patience_out:
                stopped = "early_stopping"
            ckpt.save_checkpoint(
                folder,
                module,
                optimizer,
                {
                    "fingerprint": _fingerprint(config),
                    "epoch": epoch,
                    "step": step,
                    "history": [asdict(r) for r in history],
                    "best": best,
                    "finished": finished,
                    "stopped": stopped,
                    "normalization": normalization.model_dump(mode="json"),
                },
            )
            if finished:
                break
    finally:
        bar.close()

    if not ckpt.load_best(folder, module):
        say("no validated epoch: writing the last weights")
    module.eval()
    final_meta = build_meta(
        meta,
        config,
        normalization,
        patch,
        model_dims,
        orientation,
        best,
        history,
        step,
        stopped,
        train_pairs,
    )
    dtype, agreement = storage_dtype(module, config, val_maker, val_tiles[:8])
    final_meta = ModelMeta.model_validate(
        {
            **final_meta.model_dump(),
            "provenance": {
                **final_meta.provenance,
                "weights_dtype": dtype,
                "fp16_label_agreement": agreement,
            },
        }
    )
    from segflow.models import save_model

    to_save = half_copy(module) if dtype == "float16" else module
    digest = save_model(to_save, final_meta, config.output)
    _readable(config.output)
    say(f"wrote {config.output} ({config.output.stat().st_size / 1e6:.2f} MB, {dtype})")
    return TrainResult(
        model_path=config.output,
        sha256=digest,
        epochs=len(history),
        steps=step,
        best_epoch=int(best["epoch"]),
        metrics=dict(best["metrics"]),
        history=history,
        stopped=stopped,
        seconds=round(time.perf_counter() - started, 2),
        weights_dtype=dtype,
    )


def _run_epoch(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    prefetcher: Prefetcher,
    config: TrainConfig,
    step: int,
    total_steps: int,
    on_step: Callable[[float], None],
    out_of_time: Callable[[], bool],
) -> tuple[list[float], float, int, bool]:
    """One epoch of optimizer steps; returns (losses, last lr, step count, ran out of time)."""
    losses: list[float] = []
    lr = 0.0
    with prefetcher as batches:
        for x, y in batches:
            lr = _lr_at(step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = loss_fn(module(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            on_step(losses[-1])
            if out_of_time():
                return losses, lr, step, True
    return losses, lr, step, False


def _readable(path: Path) -> None:
    """rw-r--r--: atomic writes go through 0600 temporary files, a model file is for sharing."""
    with contextlib.suppress(OSError):  # a file system without modes: nothing to fix
        path.chmod(0o644)


def _check(config: TrainConfig) -> None:
    for name in ("batch_size", "epochs", "steps_per_epoch", "val_patches", "stats_windows"):
        if int(getattr(config, name)) < 1:
            raise ConfigError(
                f"{name.replace('_', ' ')} must be at least 1, got {getattr(config, name)}"
            )
    if config.time_clock not in ("wall", "cpu"):
        raise ConfigError(f"time clock must be 'wall' or 'cpu', got {config.time_clock!r}")
    if not config.lr > 0:
        raise ConfigError(f"learning rate must be positive, got {config.lr}")
    if config.freeze_encoder_epochs < 0:
        raise ConfigError("frozen-encoder epochs cannot be negative")
    if config.output.suffix != ".safetensors":
        raise ConfigError(f"the model file must end in .safetensors, got {config.output.name}")


def _class_weights(
    config: TrainConfig, pairs: Sequence[OpenPair], num_classes: int
) -> list[float] | None:
    if isinstance(config.class_weights, list):
        return [float(w) for w in config.class_weights]
    if config.class_weights == "none":
        return None
    if config.class_weights != "auto":
        raise ConfigError(
            f"class weights must be 'none', 'auto' or numbers, got {config.class_weights!r}"
        )
    counts = label_counts(
        [p.mask for p in pairs],
        num_classes,
        ignore_values=(config.ignore_index,),
        windows=config.stats_windows,
        seed=config.seed,
    )
    return class_weights_from_counts(counts)


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
