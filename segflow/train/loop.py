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
from segflow.models.files import save_model
from segflow.models.meta import ModelMeta, Normalization
from segflow.models.registry import new_model
from segflow.models.transfer import load_encoder_weights
from segflow.train import checkpoint as ckpt
from segflow.train.augment import NO_AUGMENT
from segflow.train.batches import (
    BatchMaker,
    Prefetcher,
    Tile,
    evaluate,
    memory_format,
)
from segflow.train.config import EpochRecord, Log, TrainConfig, TrainResult
from segflow.train.data import TrainData, open_training_data
from segflow.train.losses import SegmentationLoss, class_weights_from_counts
from segflow.train.modelfile import build_meta, half_copy, storage_dtype
from segflow.train.progress import ProgressBar
from segflow.train.sampling import (
    OpenPair,
)
from segflow.train.stats import compute_normalization, label_counts

__all__ = ["EpochRecord", "TrainConfig", "TrainResult", "train"]

OnEpoch = Callable[[EpochRecord], None]


def train(
    config: TrainConfig,
    *,
    log: Log | None = None,
    progress: bool = False,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Train a model on ``config``'s pairs and write it to ``config.output``."""
    started = time.perf_counter()
    out_of_time = _deadline(config)
    say = log or _silent
    config.check()
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)  # the initial weights

    data = open_training_data(config)
    for warning in data.resolution.warnings:
        say(f"warning: {warning}")
    state = _resume_state(config)
    normalization = _normalization(config, data, state, say)
    module, meta = _new_module(config, data, fresh=state is None, say=say)
    session = _session(config, data, module, normalization, say)
    run = _restore(session, state)
    bar = ProgressBar(progress, config.epochs * config.steps_per_epoch, run.step)
    try:
        _train_epochs(session, run, bar, on_epoch, out_of_time)
    finally:
        bar.close()
    return _write_model(session, meta, run, started)


# ---------------------------------------------------------------------------
# set-up


@dataclass
class _Session:
    """One run's moving parts, built once and handed to every epoch."""

    config: TrainConfig
    data: TrainData
    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: SegmentationLoss
    maker: BatchMaker
    val_maker: BatchMaker
    val_tiles: list[Tile]
    normalization: Normalization
    folder: Path
    say: Log


def _no_best() -> dict[str, Any]:
    return {"miou": -1.0, "epoch": 0, "metrics": {}}


@dataclass
class _Progress:
    """Where training stands: what a checkpoint records and a resumed run starts from."""

    history: list[EpochRecord] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=_no_best)
    epoch: int = 0  # the last completed epoch
    step: int = 0
    stopped: str = "epochs"
    done: bool = False  # a resumed run that had already finished


def _silent(message: str) -> None:
    return None


def _deadline(config: TrainConfig) -> Callable[[], bool]:
    """``out_of_time()`` for the run's time limit, on its wall or CPU clock."""
    clock = time.process_time if config.time_clock == "cpu" else time.perf_counter
    start = clock()
    limit = config.time_limit_s
    return lambda: limit is not None and clock() - start > limit


def _resume_state(config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint state to resume from (None for a fresh run); refused if from another run."""
    if not config.resume:
        return None
    folder = config.checkpoint_folder()
    state = ckpt.load_state(folder)
    if state is not None and state.get("fingerprint") != config.fingerprint():
        raise ConfigError(
            f"the checkpoint in {folder} is from a run with other data or settings; "
            "use the same options, or drop --resume to start afresh"
        )
    return state


def _normalization(
    config: TrainConfig, data: TrainData, state: dict[str, Any] | None, say: Log
) -> Normalization:
    """Global input statistics: from the checkpoint when resuming, else from the training data."""
    if state is not None:
        return Normalization.model_validate(state["normalization"])
    normalization = compute_normalization(
        [p.image for p in data.train_pairs],
        windows=config.stats_windows,
        seed=config.seed,
        scale=config.scale,
        offset=config.offset,
        clip_percentiles=config.clip_percentiles,
    )
    say(f"normalization: mean {_fmt(normalization.mean)}, std {_fmt(normalization.std)}")
    return normalization


def _new_module(
    config: TrainConfig, data: TrainData, *, fresh: bool, say: Log
) -> tuple[nn.Module, ModelMeta]:
    """The model to train (encoder weights loaded on a fresh run) and its metadata."""
    arch_kwargs = dict(config.arch_kwargs)
    if config.arch.lower() == "pixel":  # the one architecture built for either 2-D or 3-D
        arch_kwargs.setdefault("spatial_dims", data.model_dims)
    module, meta = new_model(
        config.arch,
        encoder=config.encoder,
        in_channels=data.sampler.channels,
        classes=data.classes,
        band_names=data.band_names,
        **arch_kwargs,
    )
    if config.encoder_weights is not None and fresh:
        report = load_encoder_weights(module, config.encoder_weights)
        say(f"encoder weights from {config.encoder_weights.name}: {report.summary()}")
    if config.freeze_encoder_epochs and _encoder(module) is None:
        raise ConfigError(f"{config.arch} has no encoder to freeze; drop --freeze-encoder-epochs")
    stride = meta.output_stride
    if any(p % stride for p in data.patch):
        raise ConfigError(
            f"patch size {data.patch} must be a multiple of the model's output stride {stride}"
        )
    return module, meta


def _session(
    config: TrainConfig, data: TrainData, module: nn.Module, normalization: Normalization, say: Log
) -> _Session:
    loss_fn = SegmentationLoss(
        data.num_classes,
        ignore_index=config.ignore_index,
        class_weights=_class_weights(config, data.train_pairs, data.num_classes),
        dice_weight=config.dice_weight,
    )
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    squeeze = data.squeeze_axis
    layout = config.channels_last
    maker = BatchMaker(data.sampler, normalization, config.augment, squeeze, layout)
    val_maker = BatchMaker(data.validator, normalization, NO_AUGMENT, squeeze, layout)
    val_tiles = data.validator.tiles(limit=config.val_patches, seed=config.seed)
    return _Session(
        config, data, module, optimizer, loss_fn, maker, val_maker, val_tiles, normalization,
        config.checkpoint_folder(), say,
    )  # fmt: skip


def _restore(s: _Session, state: dict[str, Any] | None) -> _Progress:
    """Weights, optimizer and RNG from the checkpoint (when resuming); then the memory layout."""
    run = _Progress()
    if state is not None:
        ckpt.restore_checkpoint(s.folder, s.module, s.optimizer, state)
        run.history = [EpochRecord(**r) for r in state["history"]]
        run.best = state["best"]
        run.epoch, run.step = int(state["epoch"]), int(state["step"])
        s.say(f"resuming after epoch {state['epoch']} (step {run.step}) from {s.folder}")
        # a resumed run continues unless it had stopped early or already ran every epoch
        run.done = state.get("stopped") == "early_stopping" or run.epoch >= s.config.epochs
        run.stopped = str(state.get("stopped", "epochs")) if run.done else "epochs"
    if s.config.channels_last:
        s.module = s.module.to(memory_format=memory_format(len(s.data.patch) + 2))
    return run


# ---------------------------------------------------------------------------
# the epochs


def _train_epochs(
    s: _Session,
    run: _Progress,
    bar: ProgressBar,
    on_epoch: OnEpoch | None,
    out_of_time: Callable[[], bool],
) -> None:
    if run.done:
        return
    for epoch in range(run.epoch + 1, s.config.epochs + 1):
        record, ran_out = _train_epoch(s, run, epoch, bar, out_of_time)
        if on_epoch is not None:
            on_epoch(record)
        finished = _stops_after(s.config, run, epoch, ran_out)
        _save_checkpoint(s, run, finished)
        if finished:
            break


def _train_epoch(
    s: _Session, run: _Progress, epoch: int, bar: ProgressBar, out_of_time: Callable[[], bool]
) -> tuple[EpochRecord, bool]:
    """Optimizer steps, then validation; returns the epoch's record and whether time ran out."""
    config = s.config
    frozen = epoch <= config.freeze_encoder_epochs
    started = time.perf_counter()
    s.module.train()
    _set_frozen(s.module, frozen)
    # seeded per epoch: a resumed run draws the patches the uninterrupted one would have
    rng = np.random.default_rng([config.seed, epoch])
    s.data.sampler.reset()
    torch.manual_seed(config.seed * 100003 + epoch)
    prefetcher = Prefetcher(s.maker, rng, config.batch_size, config.steps_per_epoch)
    losses, lr, ran_out = _run_steps(
        s, run, prefetcher, functools.partial(bar.advance, epoch), out_of_time
    )
    _set_frozen(s.module, False)
    cm = evaluate(
        s.module, s.val_maker, s.val_tiles, s.data.num_classes, config.ignore_index,
        config.batch_size,
    )  # fmt: skip
    record = EpochRecord(
        epoch=epoch,
        step=run.step,
        loss=float(np.mean(losses)) if losses else float("nan"),
        lr=lr,
        seconds=round(time.perf_counter() - started, 2),
        metrics=cm.report([c.name for c in s.data.classes]),
        frozen_encoder=frozen,
    )
    run.history.append(record)
    run.epoch = epoch
    miou = _keep_best(s, run, record)
    s.say(
        f"epoch {epoch}/{config.epochs}: loss {record.loss:.4f}, val mIoU {miou:.4f}, "
        f"accuracy {record.metrics['overall_accuracy']}, {record.seconds:.1f} s"
        + (" (encoder frozen)" if frozen else "")
    )
    return record, ran_out


def _run_steps(
    s: _Session,
    run: _Progress,
    prefetcher: Prefetcher,
    on_step: Callable[[float], None],
    out_of_time: Callable[[], bool],
) -> tuple[list[float], float, bool]:
    """One epoch of optimizer steps; returns (losses, last lr, ran out of time)."""
    total_steps = s.config.epochs * s.config.steps_per_epoch
    losses: list[float] = []
    lr = 0.0
    with prefetcher as batches:
        for x, y in batches:
            lr = _lr_at(run.step, total_steps, s.config)
            for group in s.optimizer.param_groups:
                group["lr"] = lr
            loss = s.loss_fn(s.module(x), y)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            s.optimizer.step()
            run.step += 1
            losses.append(float(loss.detach()))
            on_step(losses[-1])
            if out_of_time():
                return losses, lr, True
    return losses, lr, False


def _keep_best(s: _Session, run: _Progress, record: EpochRecord) -> float:
    """Save the weights when validation mIoU improved; returns this epoch's mIoU."""
    miou = record.metrics["miou"] if record.metrics["miou"] is not None else 0.0
    improved = miou > float(run.best["miou"]) + s.config.min_delta or run.best["epoch"] == 0
    if improved:
        run.best = {"miou": miou, "epoch": record.epoch, "metrics": record.metrics}
        ckpt.save_weights(s.folder / ckpt.BEST, s.module)
    return float(miou)


def _stops_after(config: TrainConfig, run: _Progress, epoch: int, ran_out: bool) -> bool:
    """Whether training ends with this epoch; records why in ``run.stopped``."""
    patience_out = config.patience is not None and epoch - int(run.best["epoch"]) >= config.patience
    if ran_out:
        run.stopped = "time_limit"
    elif patience_out:
        run.stopped = "early_stopping"
    return ran_out or patience_out or epoch == config.epochs


def _save_checkpoint(s: _Session, run: _Progress, finished: bool) -> None:
    ckpt.save_checkpoint(
        s.folder,
        s.module,
        s.optimizer,
        {
            "fingerprint": s.config.fingerprint(),
            "epoch": run.epoch,
            "step": run.step,
            "history": [asdict(r) for r in run.history],
            "best": run.best,
            "finished": finished,
            "stopped": run.stopped,
            "normalization": s.normalization.model_dump(mode="json"),
        },
    )


# ---------------------------------------------------------------------------
# the model file


def _write_model(s: _Session, meta: ModelMeta, run: _Progress, started: float) -> TrainResult:
    """The best weights (float16 when labels stay the same) and full metadata, to one file."""
    config, data = s.config, s.data
    if not ckpt.load_best(s.folder, s.module):
        s.say("no validated epoch: writing the last weights")
    s.module.eval()
    final_meta = build_meta(
        meta, config, s.normalization, data.patch, data.model_dims, data.orientation, run.best,
        run.history, run.step, run.stopped, data.train_pairs, resolution=data.resolution,
    )  # fmt: skip
    dtype, agreement = storage_dtype(s.module, config, s.val_maker, s.val_tiles[:8])
    final_meta = _with_weights_dtype(final_meta, dtype, agreement)
    to_save = half_copy(s.module) if dtype == "float16" else s.module
    digest = save_model(to_save, final_meta, config.output)
    _readable(config.output)
    s.say(f"wrote {config.output} ({config.output.stat().st_size / 1e6:.2f} MB, {dtype})")
    return TrainResult(
        model_path=config.output,
        sha256=digest,
        epochs=len(run.history),
        steps=run.step,
        best_epoch=int(run.best["epoch"]),
        metrics=dict(run.best["metrics"]),
        history=run.history,
        stopped=run.stopped,
        seconds=round(time.perf_counter() - started, 2),
        weights_dtype=dtype,
    )


def _with_weights_dtype(meta: ModelMeta, dtype: str, agreement: float | None) -> ModelMeta:
    provenance = {**meta.provenance, "weights_dtype": dtype, "fp16_label_agreement": agreement}
    return ModelMeta.model_validate({**meta.model_dump(), "provenance": provenance})


# ---------------------------------------------------------------------------
# set-up helpers


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


def _readable(path: Path) -> None:
    """rw-r--r--: atomic writes go through 0600 temporary files, a model file is for sharing."""
    with contextlib.suppress(OSError):  # a file system without modes: nothing to fix
        path.chmod(0o644)


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
