"""One forward at a time per device, the oldest task's batch first."""

from __future__ import annotations

import threading

import pytest
import torch

import segflow.engine.device_queue as device_queue_module
from segflow.engine.device_queue import DeviceQueue, device_queue, task_ticket


def test_queued_calls_run_one_at_a_time_lowest_ticket_first():
    queue = DeviceQueue("test-device")
    gate = threading.Event()
    ran: list[str] = []
    first = queue.submit(5, gate.wait)  # holds the device while the others queue up
    later = [
        queue.submit(ticket, lambda name=name: ran.append(name))
        for ticket, name in [(3, "younger-a"), (1, "oldest"), (3, "younger-b"), (2, "middle")]
    ]
    gate.set()
    first.result(timeout=5)
    for future in later:
        future.result(timeout=5)
    # by ticket; within a ticket, in the order they came
    assert ran == ["oldest", "middle", "younger-a", "younger-b"]


def test_what_a_call_raises_reaches_whoever_waits_on_it_and_the_queue_goes_on():
    queue = DeviceQueue("test-device")

    def fails() -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        queue.submit(0, fails).result(timeout=5)
    assert queue.submit(0, lambda: 42).result(timeout=5) == 42


def test_the_device_thread_ends_when_idle_and_a_new_one_starts_on_demand(monkeypatch):
    monkeypatch.setattr(device_queue_module, "IDLE_SECONDS", 0.01)
    queue = DeviceQueue("test-device-idle")
    assert queue.submit(0, threading.current_thread).result(timeout=5).name == "test-device-idle"
    for _ in range(500):
        if not any(t.name == "test-device-idle" for t in threading.enumerate()):
            break
        threading.Event().wait(0.01)
    assert not any(t.name == "test-device-idle" for t in threading.enumerate())
    assert queue.submit(1, lambda: "again").result(timeout=5) == "again"


def test_one_queue_per_device_and_tickets_grow():
    assert device_queue(torch.device("cpu")) is device_queue(torch.device("cpu"))
    assert device_queue(torch.device("cpu")) is not device_queue(torch.device("meta"))
    assert task_ticket() < task_ticket()
