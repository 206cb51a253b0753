"""The glibc heap helpers: real calls into the C library where it is glibc.

What changes the whole process (``tune_process``) is tried in subprocesses, so
the test process keeps glibc's defaults like any caller of the library.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from segflow import heap
from tests.conftest import REPO

glibc = pytest.mark.skipif(heap._glibc() is None, reason="needs glibc (Linux)")


@glibc
def test_free_heap_over_the_limit_is_given_back(monkeypatch):
    monkeypatch.setattr(heap, "heap_tuned", lambda: True)
    buffers = [np.ones(2**18, dtype=np.uint8) for _ in range(64)]  # 16 MB of heap chunks
    del buffers
    assert heap.release_free_heap(limit_bytes=0)
    assert not heap.release_free_heap(limit_bytes=2**62)


@glibc
def test_an_untuned_heap_is_left_to_glibc(monkeypatch):
    monkeypatch.setattr(heap, "heap_tuned", lambda: False)
    buffers = [np.ones(2**18, dtype=np.uint8) for _ in range(64)]
    del buffers
    assert not heap.release_free_heap(limit_bytes=0)


def test_helpers_are_no_ops_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    assert not heap.release_free_heap(limit_bytes=0)
    assert not heap.limit_malloc_arenas.__wrapped__(1)
    assert not heap.reuse_freed_buffers.__wrapped__()


@glibc
def test_the_arena_cap_respects_a_users_setting(monkeypatch):
    monkeypatch.setattr(heap, "_MALLOC_SETTINGS_AT_START", frozenset({"MALLOC_ARENA_MAX"}))
    assert not heap.limit_malloc_arenas.__wrapped__(1)
    monkeypatch.setattr(heap, "_MALLOC_SETTINGS_AT_START", frozenset())
    assert heap.limit_malloc_arenas.__wrapped__(1) is sys.platform.startswith("linux")


@glibc
@pytest.mark.parametrize("setting", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_freed_buffers_are_kept_unless_the_user_says_otherwise(monkeypatch, setting):
    monkeypatch.setattr(heap, "_MALLOC_SETTINGS_AT_START", frozenset({setting}))
    assert not heap.reuse_freed_buffers.__wrapped__()
    monkeypatch.setattr(heap, "_MALLOC_SETTINGS_AT_START", frozenset())
    assert heap.reuse_freed_buffers.__wrapped__()


@glibc
@pytest.mark.parametrize("at_start", [True, False])
def test_only_settings_the_process_started_with_are_the_users(at_start):
    # a Dask nanny leaves MALLOC_TRIM_THRESHOLD_ in the environment of the process that
    # started its workers; glibc never read it there, so segflow's settings still apply
    script = (
        "import os, segflow.heap as heap\n"
        "os.environ['MALLOC_TRIM_THRESHOLD_'] = '65536'\n"
        "print(heap.reuse_freed_buffers())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if at_start:
        env["MALLOC_TRIM_THRESHOLD_"] = "65536"
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(not at_start)


def _python(script: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``script`` in a fresh interpreter without the caller's MALLOC_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**clean, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


# whether a 64 MB malloc gets a mapping of its own: always with glibc's defaults
# (their largest mmap threshold is 32 MB), never under segflow's 512 MB threshold
_PROBE = """
from segflow import heap
def mapped():
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = heap._glibc().mallinfo2().hblks
    pointer = libc.malloc(64 * 2**20)
    mapped = heap._glibc().mallinfo2().hblks > before
    libc.free(pointer)
    return mapped
"""


@glibc
def test_segment_leaves_the_callers_process_as_it_was(tmp_path):
    script = _PROBE + (
        "import sys\n"
        "from pathlib import Path\n"
        "import segflow\n"
        "from tests.conftest import pixel_model, textured, write_tif\n"
        "tmp = Path(sys.argv[1])\n"
        "path = write_tif(tmp / 'in.tif', textured((96, 80), 1, seed=0), tile=None)\n"
        "model = pixel_model([[0.0], [1.0]], [0.0, -100.0])\n"
        "segflow.segment(path, model, tmp / 'o.zarr', patch_size=32, device='cpu')\n"
        "print(mapped(), heap.heap_tuned())\n"
        "print(heap.tune_process(), mapped(), heap.heap_tuned(), heap.tune_process())\n"
    )
    out = _python(script, str(tmp_path))
    assert out[:2] == ["True", "False"]  # glibc's defaults after import segflow and segment()
    assert out[2:] == ["True", "False", "True", "True"]  # tune_process tunes it, once


@glibc
def test_a_worker_started_with_the_heap_environment_counts_as_tuned():
    script = _PROBE + "print(mapped(), heap.heap_tuned(), heap.tune_process())\n"
    assert _python(script, env=heap.heap_environment()) == ["False", "True", "True"]


@glibc
def test_dask_workers_preloading_segflow_heap_are_tuned():
    script = _PROBE + (
        "import asyncio\n"
        "from distributed import Scheduler, Worker\n"
        "async def main():\n"
        "    async with Scheduler(host='127.0.0.1', dashboard_address=None) as s:\n"
        "        async with Worker(s.address, preload=['segflow.heap']):\n"
        "            print(mapped(), heap.heap_tuned())\n"
        "print(mapped())\n"
        "asyncio.run(main())\n"
    )
    assert _python(script) == ["True", "False", "True"]


@glibc
def test_a_nanny_preloading_segflow_heap_starts_its_worker_tuned():
    # the nanny's own trim threshold (dask's default) would otherwise reach the worker
    script = _PROBE + (
        "import asyncio\n"
        "from distributed import Client, Nanny, Scheduler\n"
        "def probe():\n"
        "    return mapped(), heap.heap_tuned()\n"
        "async def main():\n"
        "    async with Scheduler(host='127.0.0.1', dashboard_address=None) as s:\n"
        "        async with Nanny(s.address, nthreads=1, preload_nanny=['segflow.heap']):\n"
        "            async with Client(s.address, asynchronous=True) as client:\n"
        "                [result] = (await client.run(probe)).values()\n"
        "                print(*result)\n"
        "asyncio.run(main())\n"
    )
    assert _python(script) == ["False", "True"]


def _owner(array: np.ndarray) -> object:
    while isinstance(array.base, np.ndarray):
        array = array.base
    base = array.base
    return base.obj if isinstance(base, memoryview) else base


def test_large_arrays_get_a_mapping_of_their_own():
    big = heap.mapped_empty((4, heap.MAPPED_BYTES // 8), np.int16)
    assert isinstance(_owner(big), mmap.mmap)
    assert big.shape == (4, heap.MAPPED_BYTES // 8) and big.dtype == np.int16
    big[...] = 7  # writable, C-contiguous like np.empty
    assert big.flags.c_contiguous and int(big[-1, -1]) == 7
    small = heap.mapped_empty((16, 16), np.float32)
    assert not isinstance(_owner(small), mmap.mmap)  # small ones stay in the heap


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_openmp_threads_sleep_when_idle_unless_the_user_says_otherwise(given):
    # read when OpenMP loads: the command tunes its process before torch is imported
    script = (
        "import os, segflow.heap as heap\n"
        "heap.tune_process()\n"
        "print(os.environ['OMP_WAIT_POLICY'], heap.worker_environment().get('OMP_WAIT_POLICY'))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env = clean if given is None else {**clean, "OMP_WAIT_POLICY": given}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    # the user's setting is kept, here and in the workers segflow starts (which inherit it)
    assert out.stdout.split() == (["PASSIVE", "PASSIVE"] if given is None else [given, "None"])


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's"
)
def test_a_background_thread_lowers_its_own_priority_only():
    seen: dict[str, int] = {}

    def background() -> None:
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert heap.lower_this_threads_priority(5)
        seen["change"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) - before

    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen["change"] == 5
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
