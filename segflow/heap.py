"""Keeps glibc's heap from holding on to memory the engine has freed (Linux only).

Region tasks allocate and free buffers of tens of megabytes from several
threads. glibc keeps freed chunks inside its heaps for reuse; with the
default settings that retained memory, not the live data, grew peak RSS with
the length of a run. Both helpers are no-ops elsewhere (another libc, macOS).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameters
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 16 * 2**20
FREE_HEAP_LIMIT_BYTES = 256 * 2**20


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
def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's per-thread heap arenas, unless MALLOC_ARENA_MAX is set.

    Every thread that allocates gets its own arena by default, and each arena
    keeps the large, short-lived buffers of its region tasks: with two worker
    threads and a prefetch thread, peak memory was 1.6x what two arenas give,
    at the same speed. Returns whether the cap was applied.
    """
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


@functools.cache
def map_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Give buffers of ``threshold`` bytes or more their own mapping, returned when freed.

    glibc raises its threshold as mapped buffers are freed, up to 32 MB, after
    which a region's 16-32 MB buffers (reads, masks, labels) come from the heap
    and leave holes there: a 512^3 volume's run grew by about 160 MB of free
    heap. A fixed threshold keeps them out of the heap; the per-batch buffers
    below it still reuse heap memory. Skipped when MALLOC_MMAP_THRESHOLD_ is set.
    """
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def release_free_heap(limit_bytes: int | None = None) -> bool:
    """Give free heap pages back to the system once more than ``limit_bytes`` are free.

    Trimming after every region would cost page faults when the memory is
    reused; never trimming let a 16384^2 run hold ~450 MB of free heap. Returns
    whether it trimmed.
    """
    libc = _glibc()
    limit = FREE_HEAP_LIMIT_BYTES if limit_bytes is None else limit_bytes
    if libc is None or libc.mallinfo2().fordblks <= limit:
        return False
    libc.malloc_trim(0)
    return True
