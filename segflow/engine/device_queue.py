"""One forward at a time per device, the oldest task's batch first.

Region tasks in one process share the device. If their forwards took turns,
the tasks would finish together and then all read, argmax and write while the
device sat idle: about a quarter of a run on a device as fast as the CPU path.
Here each task's batches are queued as soon as they are cut, and the device
runs the queued batch of the task that started first. The oldest task
finishes its forwards early, and its outputs are made while the next task
keeps the device busy.

A forward's result does not depend on which thread runs it or on what ran
before it, so the queue changes timing, never bytes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import torch

T = TypeVar("T")

# False runs each forward in the thread that asks for it, as tasks did before (same bytes)
QUEUED = True
# how long the device thread waits for more work before it ends (a new one starts on demand)
IDLE_SECONDS = 2.0

_TICKETS = itertools.count()


def task_ticket() -> int:
    """A task's place in the device queue: tasks that start earlier go first."""
    return next(_TICKETS)


class DeviceQueue:
    """Runs submitted calls one at a time in its own thread, lowest ticket first."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._order = itertools.count()  # first come, first served within a ticket
        self._waiting: list[tuple[int, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._running = False

    def submit(self, ticket: int, call: Callable[[], T]) -> Future[T]:
        """Queue ``call`` for the device; its future holds what it returned or raised."""
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

        if not QUEUED:
            run()
            return future
        with self._cond:
            heapq.heappush(self._waiting, (ticket, next(self._order), run))
            if not self._running:
                self._running = True
                threading.Thread(target=self._serve, name=self._name, daemon=True).start()
            self._cond.notify()
        return future

    def _serve(self) -> None:
        while True:
            with self._cond:
                if not self._waiting:
                    self._cond.wait(IDLE_SECONDS)
                if not self._waiting:
                    self._running = False
                    return
                _, _, run = heapq.heappop(self._waiting)
            run()


_QUEUES: dict[str, DeviceQueue] = {}
_QUEUES_LOCK = threading.Lock()


def device_queue(device: torch.device) -> DeviceQueue:
    """This process's queue for ``device``."""
    key = str(device)
    with _QUEUES_LOCK:
        queue = _QUEUES.get(key)
        if queue is None:
            queue = _QUEUES[key] = DeviceQueue(f"segflow-device-{key}")
        return queue
