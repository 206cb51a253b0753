"""Process tuning for region tasks: glibc heap settings (Linux only), GDAL's cache, OpenMP.

Region tasks and forward passes allocate and free buffers of tens to hundreds
of megabytes from several threads. Handing each one back to the system when
freed makes the next batch fault it in again (page faults were half of a
CPU forward's time); keeping everything lets free heap grow with the run. So
freed buffers stay in the heap for reuse, the number of heaps is capped, and
free heap is given back between regions once it passes a limit. Buffers of
another size and lifetime (a region's read) are mapped on their own instead
(``mapped_empty``), so they leave no holes in the heap.

These settings change the whole process, so a library never applies them by
itself: the ``segflow`` command calls ``tune_process`` at start, a caller may
call it, LocalClusters started by segflow give their workers
``heap_environment``, and ``dask worker --preload-nanny segflow.heap`` (or
``--preload``) applies them at worker start-up (``dask_setup``). Elsewhere
glibc's defaults, or the user's MALLOC_* variables, stay in charge.
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
import sys
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 512 * 2**20  # glibc's largest; above any activation at default batch sizes
TRIM_THRESHOLD_BYTES = 1024 * 2**20  # trimming is left to release_free_heap
FREE_HEAP_LIMIT_BYTES = 256 * 2**20
MAPPED_BYTES = 16 * 2**20  # mapped_empty's arrays from this size up
GDAL_CACHE_MB = 32  # about one row of tiles of a 16384-wide scene
# OpenMP threads otherwise spin for a while after every parallel op, taking cores from the
# threads that read, cut, blend and write: with a device doing the forwards, a third of
# a 2-D run's CPU time went to spinning. Read when OpenMP loads (torch's first import).
OPENMP_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE"}
_OPENMP_SETTINGS_AT_START = frozenset(name for name in OPENMP_SETTINGS if name in os.environ)
# glibc reads MALLOC_* variables when the process starts, so those are the user's settings;
# ones set later (a Dask nanny sets one in the process that starts its workers) are not
_MALLOC_SETTINGS_AT_START = frozenset(name for name in os.environ if name.startswith("MALLOC_"))
# a worker started with heap_environment runs under segflow's settings without tune_process
_STARTED_TUNED = os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(TRIM_THRESHOLD_BYTES)
_applied_here = False  # set by tune_process


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2  # glibc >= 2.33
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc, or too old
        return None


@functools.cache
def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Cap glibc's heap arenas: with one, every thread allocates from the main heap.

    A thread's own arena is made of 64 MB heaps, so it maps a larger buffer (a
    3-D U-Net activation of 113 MB) afresh on every forward whatever the
    threshold: the engine's forwards, in worker threads, ran at half the speed
    of the same forwards in the main thread. One arena also keeps less freed
    memory than one per thread (1.6x the peak with two workers and a prefetch
    thread). Skipped when the process started with MALLOC_ARENA_MAX set; returns whether the cap was applied.
    """
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in _MALLOC_SETTINGS_AT_START:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


@functools.cache
def reuse_freed_buffers(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES
) -> bool:
    """Keep freed buffers below ``mmap_threshold`` in the heap, for the next batch to reuse.

    A CPU forward pass allocates and frees hundreds of MB of activations per
    batch. With glibc's defaults, buffers over 32 MB get a fresh mapping every
    time and freed heap tops are handed back at once, so every forward faults
    its working set in again: a U-Net/resnet18 ran at half speed. Here they stay
    in the heap; ``release_free_heap`` after each region bounds what stays free.
    Skipped when the process started with MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_.
    """
    libc = _glibc()
    if (
        libc is None
        or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & _MALLOC_SETTINGS_AT_START
    ):
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def heap_environment() -> dict[str, str]:
    """The same settings as environment variables, for worker processes glibc reads them in.

    Set before a process starts, they apply to every thread from its first
    allocation (a Dask nanny otherwise gives its workers a small trim threshold).
    """
    return {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES),
    }


def worker_environment() -> dict[str, str]:
    """:func:`heap_environment` and OPENMP_SETTINGS, less the variables this process started
    with (the user's: theirs win in the workers segflow starts, too)."""
    settings = {**heap_environment(), **OPENMP_SETTINGS}
    given = _MALLOC_SETTINGS_AT_START | _OPENMP_SETTINGS_AT_START
    return {k: v for k, v in settings.items() if k not in given}


@functools.cache
def tune_process() -> bool:
    """Apply segflow's heap settings, GDAL cache size and OpenMP wait policy (once).

    Each setting the user gave (a MALLOC_* variable the process started with,
    GDAL_CACHEMAX, OMP_WAIT_POLICY) is kept. The OpenMP policy takes effect only
    before torch is first imported (the ``segflow`` command calls this first). Returns whether the process now runs under
    segflow's heap settings: False with another libc, or where the user's
    variables decide them all.
    """
    global _applied_here
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))  # read when GDAL first caches
    for name, value in OPENMP_SETTINGS.items():
        os.environ.setdefault(name, value)
    arenas_capped = limit_malloc_arenas()
    buffers_kept = reuse_freed_buffers()
    _applied_here = arenas_capped or buffers_kept
    return heap_tuned()


def heap_tuned() -> bool:
    """Whether segflow's heap settings are in effect: from ``tune_process`` or at start-up."""
    return _applied_here or _STARTED_TUNED


def dask_setup(service: object) -> None:
    """Dask preload hook: segflow's settings for the workers of ``dask worker``.

    ``--preload-nanny segflow.heap`` gives the workers a nanny starts
    ``heap_environment`` (less the nanny's own MALLOC_* settings, the user's),
    which glibc reads at their start; ``--preload segflow.heap`` tunes a worker
    once it runs, where a nanny's trim threshold already keeps freed buffers
    from being reused.
    """
    spawn_env = getattr(service, "pre_spawn_env", None)
    if isinstance(spawn_env, dict):  # a Nanny, before it starts its worker
        settings = worker_environment()
        spawn_env.update(settings)  # set in the environment the worker starts with
        getattr(service, "env", {}).update(settings)  # and kept there once it runs
    else:
        tune_process()


def release_free_heap(limit_bytes: int | None = None) -> bool:
    """Give free heap pages back to the system once more than ``limit_bytes`` are free.

    Trimming after every region would cost page faults when the memory is
    reused; never trimming let a 16384^2 run hold ~450 MB of free heap. Returns
    whether it trimmed. Only done under segflow's settings (``heap_tuned``):
    with glibc's own trim threshold the heap trims itself, and a library must
    not change how its caller's heap behaves.
    """
    libc = _glibc()
    if libc is None or not heap_tuned():
        return False
    limit = FREE_HEAP_LIMIT_BYTES if limit_bytes is None else limit_bytes
    if libc.mallinfo2().fordblks <= limit:
        return False
    libc.malloc_trim(0)
    return True


def mapped_empty(shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """An uninitialised array that, when large, lives in a mapping of its own.

    The heap keeps freed buffers for the next batch to reuse, which suits
    buffers of one size. Buffers allocated once per region (a region's read)
    or once per run (the shared-patch slots) differ in size and lifetime; in
    the heap each left a hole that later buffers only partly filled, and free
    heap grew region by region. A mapping of its own is given back whole when
    the array is freed.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MAPPED_BYTES:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)


BACKGROUND_NICENESS = 10


def lower_this_threads_priority(niceness: int = BACKGROUND_NICENESS) -> bool:
    """Give the calling thread a lower CPU priority (Linux: threads have their own).

    For work beside a run that nothing waits on until the end, such as hashing
    the input: it then takes the cores only when the run's threads leave them.
    Returns whether the priority changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + niceness)
    except OSError:
        return False
    return True
