"""One writer per output store at a time, and nothing left to clean up after a crash.

The lock is an ``flock`` on a small file beside the store (``.NAME.zarr.lock``):
the kernel releases it when its holder exits, however it exits, so a SIGKILLed run
never blocks the next one. A second run on the same store is refused in one line
while the first runs; the file names the holder for that message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from segflow.errors import OutputError

_ATTEMPTS = 5  # a holder that ends (and removes its file) as we open it: try the new file


def lock_path(store: Path) -> Path:
    return store.parent / f".{store.name}.lock"


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold the store's lock for the block, or fail at once if another run holds it."""
    path = lock_path(store)
    with _locked_file(store, path) as handle:
        try:
            _note_holder(handle)
            yield
        finally:
            # unlink while holding the lock: a run that opened this file before it was
            # removed sees that it locked a removed file and takes the new one instead
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def _locked_file(store: Path, path: Path) -> Iterator[TextIO]:
    for _ in range(_ATTEMPTS):
        handle = _open(store, path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputError(
                f"{store} is being written by another run ({holder}); wait for it to end, "
                "or choose another output"
            ) from None
        if _same_file(handle, path):
            with handle:
                yield handle
            return
        handle.close()  # locked a file its last holder had already removed
    raise OutputError(f"cannot take the lock beside {store}; is another run starting and stopping?")


def _open(store: Path, path: Path) -> TextIO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a+")
    except OSError as exc:
        raise OutputError(
            f"cannot write beside {store} ({exc.strerror}); choose another output"
        ) from None


def _same_file(handle: TextIO, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _note_holder(handle: TextIO) -> None:
    """Write who holds the lock, for the message a second run prints; best effort:
    on a full disk the lock holds without it, and the run fails at its first write."""
    note = f"pid {os.getpid()} on {socket.gethostname()}".encode()
    with contextlib.suppress(OSError):  # unbuffered: nothing is left to fail at close
        os.ftruncate(handle.fileno(), 0)
        os.pwrite(handle.fileno(), note, 0)
