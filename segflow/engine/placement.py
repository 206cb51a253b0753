"""Region tasks submitted to a cluster so that every worker takes its share.

Dask runs a task on a worker that holds a result it depends on. Tasks that take
patches from each other depend on each other, and all on the run's work
description: with that description on one worker, a whole run landed there
(one GPU of several, one process of a LocalCluster). Sent to every worker
first, it makes each of them a candidate for every task, so a ready task goes
to whichever worker is free; the results a task waits for are a few counts
(the patches travel through the scratch folder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from segflow.engine.grid import Index


def submit_tasks(
    client: Any,
    function: Callable[..., Any],
    shared: Any,
    tasks: Sequence[Index],
    after: Mapping[Index, Sequence[Index]],
    *,
    key: Callable[[Index], str],
    resources: dict[str, float] | None = None,
) -> list[Any]:
    """``function(shared, task, *its dependencies' results)`` for each task, as futures.

    ``tasks`` come in an order where dependencies come first; ``shared`` is sent
    once to every worker. ``resources`` are passed with each task: annotations can
    be lost in graph optimisation.
    """
    everywhere = client.scatter(shared, broadcast=True, hash=False)
    futures: dict[Index, Any] = {}
    for task in tasks:
        futures[task] = client.submit(
            function,
            everywhere,
            task,
            *[futures[t] for t in after.get(task, ())],
            key=key(task),
            resources=resources,
            pure=False,
        )
    return [futures[task] for task in tasks]
