"""The glibc heap helpers: real calls into the C library where it is glibc."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys

import numpy as np
import pytest

from segflow import heap

glibc = pytest.mark.skipif(heap._glibc() is None, reason="needs glibc (Linux)")


@glibc
def test_free_heap_over_the_limit_is_given_back():
    buffers = [np.ones(2**18, dtype=np.uint8) for _ in range(64)]  # 16 MB of heap chunks
    del buffers
    assert heap.release_free_heap(limit_bytes=0)
    assert not heap.release_free_heap(limit_bytes=2**62)


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
