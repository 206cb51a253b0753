"""A LocalCluster of worker processes for the length of one run (``scheduler: local``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_LOCAL_WORKERS = 2


@contextmanager
def local_cluster(workers: int | None = None, threads_per_worker: int = 1) -> Iterator[Any]:
    """Yields a ``distributed.Client`` of a loopback LocalCluster, closed afterwards.

    Workers start with the heap settings region tasks run under (see segflow.heap):
    glibc reads them only when a process starts.
    """
    import dask
    from distributed import Client, LocalCluster

    from segflow.heap import heap_environment

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **heap_environment()}
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
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
