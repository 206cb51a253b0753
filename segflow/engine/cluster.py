"""A LocalCluster of worker processes for the length of one run (``scheduler: local``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_LOCAL_WORKERS = 2


@contextmanager
def local_cluster(workers: int | None = None, threads_per_worker: int = 1) -> Iterator[Any]:
    """Yields a ``distributed.Client`` of a loopback LocalCluster, closed afterwards.

    Workers start with the heap settings region tasks run under (see segflow.heap),
    except those the user set: glibc reads them only when a process starts.
    """
    import dask
    from distributed import Client, LocalCluster

    from segflow.heap import worker_environment

    settings = worker_environment()
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **settings}
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
        # a nanny takes a variable of its own process over the config (and an earlier
        # cluster's nanny leaves dask's small trim threshold there)
        _process_environment(settings),
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers or DEFAULT_LOCAL_WORKERS,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        yield client


@contextmanager
def _process_environment(settings: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
