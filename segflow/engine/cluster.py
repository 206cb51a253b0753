"""A LocalCluster of worker processes for the length of one run (``scheduler: local``).

With ``devices``, one worker process per device, each pinned to its own GPU
(the way dask-cuda's LocalCUDACluster does it, with plain distributed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from segflow.engine.devices import visible_cuda_devices, worker_devices, worker_environment
from segflow.errors import ConfigError
from segflow.options import RunOptions

DEFAULT_LOCAL_WORKERS = 2
# a device worker that has not joined by then is not coming (a broken driver, no memory)
DEVICE_WORKERS_TIMEOUT_S = 300
_log = logging.getLogger(__name__)


@contextmanager
def cluster_for(options: RunOptions) -> Iterator[Any]:
    """The Client of the LocalCluster a ``scheduler: local`` run starts, closed afterwards.

    A CUDA ``device`` asks each task for a GPU slot (see ``execute``), which only
    the workers of ``devices`` offer: without them the tasks would wait forever.
    """
    if options.device.startswith("cuda") and not options.devices:
        raise ConfigError(
            f"scheduler local with device {options.device}: name the GPUs with devices "
            "(cuda:0,cuda:1 or all), one worker process each"
        )
    if options.devices:
        devices = worker_devices(options.devices, options.workers)
        with device_cluster(devices) as client:
            yield client
    else:
        with local_cluster(options.workers, options.threads_per_worker) as client:
            yield client


@contextmanager
def local_cluster(workers: int | None = None, threads_per_worker: int = 1) -> Iterator[Any]:
    """Yields a ``distributed.Client`` of a loopback LocalCluster, closed afterwards.

    Workers start with the heap settings region tasks run under (see segflow.heap),
    except those the user set: glibc reads them only when a process starts.
    """
    from distributed import Client, LocalCluster

    with (
        _heap_settings(),
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
def device_cluster(devices: Sequence[str], visible: Sequence[str] | None = None) -> Iterator[Any]:
    """Yields a Client of one worker process per device, one thread each, closed afterwards.

    ``devices`` come from :func:`worker_devices`. Each worker sees only its own GPU
    (CUDA_VISIBLE_DEVICES, set by its nanny before the process starts) and offers
    one ``GPU`` resource, so it runs one model task at a time; a ``cpu`` worker
    sees no GPU. Dask spreads the region tasks over the workers as on any cluster.
    ``visible`` are this process's CUDA devices (default: as CUDA reports them).
    """
    from distributed import Client, Nanny, Scheduler, SpecCluster
    from distributed.worker_memory import parse_memory_limit

    if visible is None:
        visible = visible_cuda_devices() if any(d != "cpu" for d in devices) else []
    # the machine's memory, shared as a LocalCluster shares it
    memory = parse_memory_limit("auto", 1, len(devices), logger=_log)
    workers = {
        f"device-{i}": {
            "cls": Nanny,
            "options": {
                "host": "127.0.0.1",
                "nthreads": 1,
                "memory_limit": memory,
                "resources": {} if device == "cpu" else {"GPU": 1},
                "env": worker_environment(device, visible),
                "dashboard": False,
                "silence_logs": logging.WARNING,
            },
        }
        for i, device in enumerate(devices)
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    with (
        _heap_settings(),
        SpecCluster(  # type: ignore[no-untyped-call]
            workers=workers, scheduler=scheduler, silence_logs=logging.WARNING
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        client.wait_for_workers(len(devices), timeout=DEVICE_WORKERS_TIMEOUT_S)
        yield client


@contextmanager
def _heap_settings() -> Iterator[None]:
    """Workers start with the heap settings region tasks run under (see segflow.heap),
    except those the user set: glibc reads them only when a process starts."""
    import dask

    from segflow.heap import worker_environment as heap_environment

    settings = heap_environment()
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **settings}
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
        # a nanny takes a variable of its own process over the config (and an earlier
        # cluster's nanny leaves dask's small trim threshold there)
        _process_environment(settings),
    ):
        yield


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
