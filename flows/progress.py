"""Progress of the inputs a flow run segments: the command line's bars and the run's log.

The command line's progress factories live in a module global so that tasks running
in the flow's thread pool see them without them being task inputs (Prefect would hash
and record those).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ProgressFn = Callable[[int, int], None]
ProgressFactory = Callable[[str], ProgressFn]  # label -> (done, total) callback

PROGRESS_LOG_SECONDS = 10.0
_FACTORIES: list[ProgressFactory] = []


def progress_logged(logger: Any, name: str) -> ProgressFn:
    """A (done, total) callback that feeds the innermost bar and logs every few seconds."""
    hook = _FACTORIES[-1](name) if _FACTORIES else None
    last = [-PROGRESS_LOG_SECONDS]

    def update(done: int, total: int) -> None:
        if hook is not None:
            hook(done, total)
        now = time.monotonic()
        if done == total or now - last[0] >= PROGRESS_LOG_SECONDS:
            last[0] = now
            logger.info("%s: %d %% done", name, 100 * done // max(total, 1))

    return update


@contextmanager
def progress_hook(progress: ProgressFactory | None) -> Iterator[None]:
    """Make ``progress`` the bars of the inputs segmented while the block runs."""
    if progress is None:
        yield
        return
    _FACTORIES.append(progress)
    try:
        yield
    finally:
        _FACTORIES.remove(progress)
