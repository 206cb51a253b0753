"""Which output chunks a store records as written, on a local disk or in object storage.

Completion is a zarr array of one-element chunks (``_segflow/done``): a task writes
its data chunks, then puts the one small object ``_segflow/done/c/<i>/<j>``. Object
stores write a key whole or not at all, so no rename and no lock is needed, and the
record of a whole store is one listing of that prefix, not one request per chunk.
"""

from __future__ import annotations

from segflow.io.stores import StorePath
from segflow.io.uris import ObjectPath

__all__ = ["parse_chunk_key", "recorded_chunks"]


def parse_chunk_key(key: str, ndim: int) -> tuple[int, ...] | None:
    """``"3/4"`` -> ``(3, 4)`` for a chunk key below ``c/``; None for anything else."""
    parts = key.strip("/").split("/")
    if len(parts) != ndim or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def recorded_chunks(store: StorePath, name: str, ndim: int) -> list[tuple[int, ...]]:
    """Indices of the chunk objects of array ``name`` that exist (one listing)."""
    if not isinstance(store, ObjectPath):
        from segflow.io.zarr_write import chunk_keys

        return chunk_keys(store, name, ndim)
    from segflow.io.remote import list_under

    found = (parse_chunk_key(key, ndim) for key in list_under(store / name / "c"))
    return [index for index in found if index is not None]
