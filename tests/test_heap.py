"""The glibc heap helpers: real calls into the C library where it is glibc."""

from __future__ import annotations

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
    assert not heap.limit_malloc_arenas.__wrapped__(2)
    assert not heap.map_large_buffers.__wrapped__(heap.MMAP_THRESHOLD_BYTES)


@glibc
def test_the_arena_cap_respects_a_users_setting(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not heap.limit_malloc_arenas.__wrapped__(2)
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert heap.limit_malloc_arenas.__wrapped__(2) is sys.platform.startswith("linux")


@glibc
def test_large_buffers_get_their_own_mapping_unless_the_user_says_otherwise(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert not heap.map_large_buffers.__wrapped__(heap.MMAP_THRESHOLD_BYTES)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert heap.map_large_buffers.__wrapped__(heap.MMAP_THRESHOLD_BYTES)
