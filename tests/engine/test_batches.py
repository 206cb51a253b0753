"""The background blender: items in order, failures handed back to the producer."""

from __future__ import annotations

import threading
import time

import pytest

from segflow.engine.batches import Behind


def test_items_are_worked_on_in_order_in_another_thread():
    seen: list[tuple[int, str]] = []

    def work(item: int) -> None:
        time.sleep(0.001 * (item % 3))  # uneven work must not reorder anything
        seen.append((item, threading.current_thread().name))

    behind = Behind(work, depth=2)
    for item in range(50):
        behind.put(item)
    behind.close()
    assert [item for item, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"segflow-blend"}


def test_a_failure_reaches_the_producer_which_is_never_left_blocked():
    def work(item: int) -> None:
        if item == 3:
            raise ValueError("bad patch")

    behind = Behind(work, depth=1)
    with pytest.raises(ValueError, match="bad patch"):
        for item in range(100):
            behind.put(item)
        behind.close()
    with pytest.raises(ValueError, match="bad patch"):
        behind.close()  # the worker drained the queue, so closing returns
