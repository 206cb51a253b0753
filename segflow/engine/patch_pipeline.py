"""One region task's patches: cut, queued for the device, predicted, blended in grid order.

Three threads of a task overlap with the device: the next batches are cut and
queued for the device (see ``device_queue``) while one is in the forward, and
the previous one is blended meanwhile. A patch another task predicts is read
back from it (see ``sharing``) in its place in grid order, so every pixel sums
the same terms in the same order whatever the chunking.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import torch

from segflow.engine.batches import Batch, BatchBuffers, BatchItem, Behind, group_batches, prefetch
from segflow.engine.blend import Accumulator, device_window
from segflow.engine.device_queue import device_queue, task_ticket
from segflow.engine.ensemble import EnsemblePredictor
from segflow.engine.grid import Index, Region, shift
from segflow.engine.sharing import Exchange
from segflow.models.predictor import Predictor

# forwards a task keeps queued on the device at once
QUEUED_FORWARDS = 2

if TYPE_CHECKING:  # region.py imports this module
    from segflow.engine.region import RegionStats, RegionWork


def predict_and_blend(
    work: RegionWork,
    blender: Blender,
    buffers: BatchBuffers,
    todo: list[tuple[Index, Region]],
) -> None:
    """Predict (or read back from its owner) every patch in ``todo``, blending in grid order.

    Three threads of the task overlap with the device: the next batches are cut
    and queued for the device (``device_queue``) while one is in the forward,
    and the previous one is blended meanwhile.
    """

    def blend(done: _Predicted) -> None:
        items, predicted, batch, copied = done
        for index, extent, here in items:
            blender.blend(index, extent, predicted.pop(index) if here else None)
        if blender.on_blended is not None:
            blender.on_blended(len(items))
        if batch is not None:  # blended: the logits may have been views of it
            if copied is not None:  # a pinned batch is copied to the GPU asynchronously
                copied.synchronize()
            buffers.give_back(batch)

    cut_into_buffer = functools.partial(blender.cut, buffers=buffers)
    batches = group_batches(cut_into_buffer, todo, work.batch_size, blender.predicts_here)
    behind = Behind(blend, threads=work.task_threads)
    try:
        # each batch is queued for the device as soon as it is cut (see ``device_queue``)
        for items, batch, forward in prefetch(blender.submitted(batches)):
            predicted, copied = ({}, None) if forward is None else blender.received(items, forward)
            behind.put((items, predicted, batch, copied))
    finally:
        blender.close()  # before the prefetch thread is stopped: it may wait for a slot
        behind.close()


# a batch's items, its logits, its input (to give back), and the GPU event its copy precedes
_Predicted = tuple[list[BatchItem], dict[Index, torch.Tensor], torch.Tensor | None, Any]
# a batch's items, its input, and its forward on the device's queue
_Queued = tuple[list[BatchItem], torch.Tensor | None, Future[tuple[torch.Tensor, Any]] | None]


class Blender:
    """One task's patches: predicted here, or read back from the task that owns them."""

    def __init__(
        self,
        work: RegionWork,
        exchange: Exchange | None,
        cut: Callable[..., torch.Tensor],
        predictor: RegionPredictor,
        accumulator: Accumulator,
        stats: RegionStats,
    ) -> None:
        self._work = work
        self._exchange = exchange
        self.cut = cut
        self._predictor = predictor
        self._accumulator = accumulator
        self._device = accumulator.device
        self._on_device = accumulator.device.type != "cpu"  # blend where the logits are
        self._queue = device_queue(predictor.device)
        self._ticket = task_ticket()  # tasks that start earlier go first on the device
        # forwards queued and not yet taken back: one in the device, one waiting keeps it
        # busy; more would only hold more batches' logits in memory
        self._slots = threading.Semaphore(QUEUED_FORWARDS)
        self._closed = threading.Event()
        self._spatial = len(work.grid.patch)
        self._stats = stats
        self.on_blended: Callable[[int], None] | None = None  # progress, in patches

    def predicts_here(self, index: Index) -> bool:
        """Whether this task predicts ``index``: nobody else touches it, or this task owns it."""
        return self._exchange is None or self._exchange.predicts(index)

    def submitted(self, batches: Iterator[Batch]) -> Iterator[_Queued]:
        """``batches``, each with its forward queued on the device (None where none is needed)."""
        for items, batch in batches:
            forward = None
            if batch is not None:
                while not self._slots.acquire(timeout=0.1):
                    if self._closed.is_set():  # the task failed: nobody takes it back
                        return
                forward = self._queue.submit(self._ticket, functools.partial(self._forward, batch))
            yield items, batch, forward

    def close(self) -> None:
        """The task is done with the device (or failed): stop queuing forwards."""
        self._closed.set()

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """On the device's thread: the model's output for the batch, and on a GPU an event
        that passes once its input was copied there (a pinned batch is copied
        asynchronously: refilling its buffer before the copy ran would change what
        the GPU sees). The output is finished into logits by the task (``received``)."""
        output = self._predictor.launch(batch)
        if not self._on_device:
            return output, None
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(torch.cuda.current_stream(self._device))  # the stream the copy went on
        return output, event

    def received(
        self, items: list[BatchItem], forward: Future[tuple[torch.Tensor, Any]]
    ) -> tuple[dict[Index, torch.Tensor], Any]:
        """The logits of the batch's own patches (and its copy event); shared ones are saved
        for their other users."""
        try:
            output, copied = forward.result()
        finally:
            self._slots.release()
        # blending reads any layout: no copy of a model's non-contiguous output
        logits_batch = self._predictor.finish(
            output, self._spatial, on_device=self._on_device, contiguous=False
        )
        own = [(index, extent) for index, extent, here in items if here]
        self._stats.patches_predicted += len(own)
        predicted: dict[Index, torch.Tensor] = {}
        for (index, extent), logits in zip(own, logits_batch, strict=True):
            predicted[index] = logits
            if self._exchange is not None:  # before waiting on anything: others may wait on it
                self._exchange.publish(index, extent, logits)
        return predicted, copied

    def blend(self, index: Index, extent: Region, logits: torch.Tensor | None) -> None:
        """Add one patch: ``logits`` predicted here, or None to read it back from its owner."""
        work = self._work
        window = device_window(work.blend, work.grid, index, work.sigma, self._device)
        if logits is not None:
            self._accumulator.add(logits, extent, window)
        else:
            self._blend_taken(index, extent, window)
        if self._exchange is not None:
            self._exchange.release(index)

    def _blend_taken(self, index: Index, extent: Region, window: torch.Tensor) -> None:
        """Add a patch another task predicted (or predict it here if it left no part)."""
        assert self._exchange is not None
        part = self._exchange.take(index)
        if part is None:  # not where this task can see it: predict it here
            self._stats.patches_predicted += 1
            forward = self._queue.submit(
                self._ticket, functools.partial(self._forward, self.cut([extent]))
            )
            output = forward.result()[0]
            logits = self._predictor.finish(output, self._spatial, on_device=self._on_device)[0]
            self._exchange.publish(index, extent, logits)
            self._accumulator.add(logits, extent, window)
            return
        corner = tuple(s.start for s in extent)
        values = part.logits.to(self._device)
        self._accumulator.add(values, part.extent, window[shift(part.extent, corner)])


RegionPredictor = Predictor | EnsemblePredictor
