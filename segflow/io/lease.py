"""One writer per store in object storage: a lease object taken with a conditional put.

Object stores have no flock. A run puts ``.NAME.zarr.lock`` beside the store with
"create only if absent" (S3 ``If-None-Match: *``), so of two runs starting together
exactly one gets it; the other is refused in one line naming the holder. The holder
renews the lease's expiry while it runs and deletes it at the end. A run killed
without cleaning up leaves a lease that expires ``SEGFLOW_LEASE_SECONDS`` (default
60) after its last renewal; then the next run takes it over.

For local stores :func:`writer_lock` is the flock of :mod:`segflow.io.locks`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from segflow.errors import OutputError
from segflow.io.stores import StorePath
from segflow.io.uris import ObjectPath

__all__ = ["lease_path", "lease_seconds", "writer_lock"]

DEFAULT_LEASE_SECONDS = 60.0


def lease_seconds() -> float:
    raw = os.environ.get("SEGFLOW_LEASE_SECONDS", "")
    try:
        value = float(raw) if raw else DEFAULT_LEASE_SECONDS
    except ValueError:
        value = DEFAULT_LEASE_SECONDS
    return max(value, 1.0)


def lease_path(store: ObjectPath) -> ObjectPath:
    return store.with_name(f".{store.name}.lock")


@contextlib.contextmanager
def writer_lock(store: StorePath) -> Iterator[None]:
    """Hold the store's lock (flock) or lease (object storage) for the block."""
    if not isinstance(store, ObjectPath):
        from segflow.io.locks import store_lock

        with store_lock(store):
            yield
        return
    with _lease(store):
        yield


def _body(ttl: float) -> bytes:
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    return json.dumps({"holder": holder, "expires": time.time() + ttl}).encode()


def _read(fs: Any, key: str) -> dict[str, Any]:
    try:
        found = json.loads(fs.cat_file(key))
    except FileNotFoundError:
        return {"expires": 0.0}
    except ValueError:
        return {"holder": "another process", "expires": 0.0}  # damaged: treat as expired
    return found if isinstance(found, dict) else {"expires": 0.0}


def _acquire(fs: Any, store: ObjectPath, key: str, ttl: float) -> None:
    try:
        fs.pipe_file(key, _body(ttl), mode="create")
        return
    except FileExistsError:
        pass
    held = _read(fs, key)
    left = float(held.get("expires", 0.0)) - time.time()
    if left > 0:
        holder = held.get("holder") or "another process"
        raise OutputError(
            f"{store} is being written by another run ({holder}); wait for it to end, or "
            f"choose another output (a killed run's lease expires in {left:.0f} s)"
        )
    fs.pipe_file(key, _body(ttl))  # an expired lease: its holder is gone, take it over


@contextlib.contextmanager
def _lease(store: ObjectPath) -> Iterator[None]:
    from segflow.io import remote

    ttl = lease_seconds()
    key = lease_path(store).key
    with remote.storage_errors(store, OutputError):
        fs = remote.filesystem(store)
        _acquire(fs, store, key, ttl)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 3):
            with contextlib.suppress(Exception):  # a missed renewal only shortens the lease
                fs.pipe_file(key, _body(ttl))

    keeper = threading.Thread(target=renew, name="segflow-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        with contextlib.suppress(Exception):
            fs.rm_file(key)
