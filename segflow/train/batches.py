"""Training and validation batches: sample, normalize, augment, stack; a prefetch thread.

Patches are normalized with the same function and the same global
statistics the engine uses at inference, so a model never sees data
prepared differently from what it will be run on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType

import numpy as np
import torch
from torch import nn

from segflow.engine.normalize import normalize
from segflow.io.source import Region
from segflow.models.meta import Normalization
from segflow.models.predictor import crop_to, pad_to_multiple
from segflow.train.augment import AugmentConfig, augment
from segflow.train.metrics import ConfusionMatrix
from segflow.train.sampling import PatchSampler, Sample

Tile = tuple[int, Region]
Batch = tuple[torch.Tensor, torch.Tensor]


def squeeze_axis_of(sampler_patch: Sequence[int], model_patch: Sequence[int]) -> int | None:
    """The spatial axis dropped when a 2-D model trains on one-voxel-thick volume slices."""
    if len(sampler_patch) == len(model_patch):
        return None
    for axis, size in enumerate(sampler_patch):
        if size == 1 and tuple(sampler_patch[:axis]) + tuple(sampler_patch[axis + 1 :]) == tuple(
            model_patch
        ):
            return axis
    raise ValueError(f"patch {tuple(sampler_patch)} does not reduce to {tuple(model_patch)}")


class BatchMaker:
    """Turns sampler patches into float32 model input and int64 targets."""

    def __init__(
        self,
        sampler: PatchSampler,
        normalization: Normalization | None,
        augment_config: AugmentConfig,
        squeeze_axis: int | None = None,
        channels_last: bool = False,
    ) -> None:
        self.sampler = sampler
        self.channels_last = channels_last
        self.normalization = normalization
        self.augment = augment_config
        self.squeeze_axis = squeeze_axis

    def _prepare(
        self, sample: Sample, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        x = normalize(sample.image, sample.valid, self.normalization)
        y, valid = sample.mask, sample.valid
        if self.squeeze_axis is not None:
            x = np.squeeze(x, axis=self.squeeze_axis + 1)
            y = np.squeeze(y, axis=self.squeeze_axis)
            valid = np.squeeze(valid, axis=self.squeeze_axis)
        if rng is not None and self.augment.enabled:
            x, y = augment(x, y, valid, rng, self.augment)
        return x, y

    def random(self, rng: np.random.Generator, size: int) -> Batch:
        pairs = [self._prepare(self.sampler.sample(rng), rng) for _ in range(size)]
        return self._stack(pairs)

    def tiles(self, tiles: Sequence[Tile]) -> Batch:
        return self._stack([self._prepare(self.sampler.read(i, r), None) for i, r in tiles])

    def _stack(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> Batch:
        x = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32, copy=False))
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64, copy=False))
        if self.channels_last:
            x = x.contiguous(memory_format=memory_format(x.ndim))
        return x, y


def memory_format(ndim: int) -> torch.memory_format:
    """Channels-last layout for 4-D / 5-D tensors: oneDNN's fast path on CPUs."""
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


class Prefetcher:
    """Makes ``steps`` random batches in a background thread while the model trains.

    Reads (GDAL, zlib) and numpy release the GIL, so sampling overlaps the
    forward/backward passes. The thread owns ``rng``: draws stay in order and
    a run is reproducible.
    """

    def __init__(
        self, maker: BatchMaker, rng: np.random.Generator, batch_size: int, steps: int
    ) -> None:
        self._maker = maker
        self._rng = rng
        self._batch_size = batch_size
        self._steps = steps
        self._queue: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="segflow-prefetch")

    def _run(self) -> None:
        try:
            for _ in range(self._steps):
                if self._stop.is_set():
                    return
                self._put(self._maker.random(self._rng, self._batch_size))
            self._put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: Batch | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __enter__(self) -> Iterator[Batch]:
        self._thread.start()
        return self._iterate()

    def _iterate(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def _forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    stride = int(getattr(module, "segflow_output_stride", 1) or 1)
    padded, sizes = pad_to_multiple(x, stride, x.ndim - 2)
    return crop_to(module(padded), sizes)


def predict_tiles(
    module: nn.Module, maker: BatchMaker, tiles: Sequence[Tile], batch_size: int
) -> list[np.ndarray]:
    """Argmax labels of each tile (in eval mode, no gradients), in tile order."""
    was_training = module.training
    module.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(tiles), batch_size):
                x, _ = maker.tiles(tiles[start : start + batch_size])
                out.extend(_forward(module, x).argmax(dim=1).numpy().astype(np.uint8))
    finally:
        module.train(was_training)
    return out


def evaluate(
    module: nn.Module,
    maker: BatchMaker,
    tiles: Sequence[Tile],
    num_classes: int,
    ignore_index: int,
    batch_size: int,
) -> ConfusionMatrix:
    """Confusion matrix of the model over ``tiles`` (eval mode, no gradients)."""
    was_training = module.training
    module.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    try:
        with torch.inference_mode():
            for start in range(0, len(tiles), batch_size):
                x, y = maker.tiles(tiles[start : start + batch_size])
                cm.update(_forward(module, x).argmax(dim=1).numpy(), y.numpy())
    finally:
        module.train(was_training)
    return cm
