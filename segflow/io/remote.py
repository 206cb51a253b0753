"""Object storage through fsspec: existence, listing, hashing, copying, and one-line errors.

Every call goes through :func:`filesystem`, which builds the fsspec file system for a
scheme from the environment alone (s3fs reads AWS_* and AWS_ENDPOINT_URL through
botocore; gcsfs and adlfs read GOOGLE_* / AZURE_*). Errors from the storage become
one-line :class:`~segflow.errors.SegflowError` texts that name the object and say what
to check, with credentials redacted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from segflow.errors import OutputError, ReaderError, SegflowError
from segflow.io.uris import ObjectPath, ObjectStat, as_location, endpoint_url, redact

__all__ = [
    "check_object",
    "download",
    "exists",
    "filesystem",
    "is_object",
    "is_prefix",
    "list_under",
    "local_copy",
    "open_object",
    "remove_prefix",
    "sha256_object",
    "stat",
    "storage_errors",
    "token",
    "upload",
    "upload_tree",
]

_DENIED = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "Forbidden",
    "ExpiredToken",
    "InvalidToken",
    "403",
)


def filesystem(location: ObjectPath) -> AbstractFileSystem:
    """The fsspec file system of ``location``'s scheme, configured from the environment."""
    options: dict[str, Any] = {}
    if location.scheme == "s3":
        endpoint = endpoint_url()
        if endpoint:  # older botocore ignores AWS_ENDPOINT_URL; say it explicitly
            options["endpoint_url"] = endpoint
    try:
        return fsspec.filesystem(location.scheme, **options)
    except ImportError as exc:
        raise ReaderError(
            f"{location.scheme}:// needs the package {exc.name or 'for that storage'}; install it"
        ) from None


def describe(location: ObjectPath, exc: BaseException) -> str:
    """What went wrong with ``location``, in a few words, without credentials."""
    text = " ".join(f"{type(exc).__name__} {exc}".split())
    if any(word in text for word in _DENIED) or isinstance(exc, PermissionError):
        return (
            f"access to {location} was refused; check the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile) and their permissions"
        )
    if "NoSuchBucket" in text or "bucket does not exist" in text:
        return f"bucket {location.bucket} of {location} does not exist; check the URI"
    if isinstance(exc, FileNotFoundError):
        return f"{location}: not found; check the URI"
    if isinstance(exc, ConnectionError | TimeoutError) or "Could not connect" in text:
        where = endpoint_url() or location.scheme
        return f"cannot reach the storage at {where} for {location}; check the endpoint"
    return redact(f"{location}: {text}")


@contextmanager
def storage_errors(location: ObjectPath, error: type[SegflowError] = ReaderError) -> Iterator[None]:
    """Storage exceptions inside the block become one-line ``error`` texts."""
    try:
        yield
    except SegflowError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise error(describe(location, exc)) from None
    except Exception as exc:  # botocore / aiohttp errors are no OSError
        if type(exc).__module__.split(".")[0] in ("botocore", "aiohttp", "aiobotocore", "s3fs"):
            raise error(describe(location, exc)) from None
        raise


def _info(location: ObjectPath) -> dict[str, Any] | None:
    """The object's (or prefix's) info, None when nothing is there."""
    fs = filesystem(location)
    try:
        info: dict[str, Any] = fs.info(location.key)
    except FileNotFoundError as exc:
        if "bucket" in str(exc).lower():
            raise
        return None
    return info


def exists(location: ObjectPath) -> bool:
    with storage_errors(location):
        return _info(location) is not None


def is_object(location: ObjectPath) -> bool:
    with storage_errors(location):
        info = _info(location)
    return info is not None and info.get("type") == "file"


def is_prefix(location: ObjectPath) -> bool:
    """Some object lies under ``location/``."""
    with storage_errors(location):
        fs = filesystem(location)
        try:
            found = fs.ls(location.key, detail=False, refresh=True)
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise
            return False
    return any(str(f).rstrip("/") != location.key for f in found)


def stat(location: ObjectPath) -> ObjectStat:
    with storage_errors(location):
        info = _info(location)
    if info is None or info.get("type") != "file":
        raise ReaderError(f"{location}: not found; check the URI")
    return ObjectStat(int(info.get("size") or 0), _mtime_ns(info))


def _mtime_ns(info: dict[str, Any]) -> int:
    stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if stamp is None:
        return 0
    if hasattr(stamp, "timestamp"):
        return int(stamp.timestamp() * 1e9)
    try:
        return int(float(stamp) * 1e9)
    except (TypeError, ValueError):
        return 0


def token(location: ObjectPath) -> tuple[str, int, str]:
    """Cheap identity of an object's content for Dask names: URI, size, ETag or mtime."""
    with storage_errors(location):
        info = _info(location)
    if info is None:
        raise ReaderError(f"{location}: not found; check the URI")
    tag = str(info.get("ETag") or info.get("etag") or _mtime_ns(info))
    return (location.uri, int(info.get("size") or 0), tag)


def check_object(location: ObjectPath) -> int:
    """A one-line ReaderError unless ``location`` is a non-empty object; returns its size."""
    with storage_errors(location):
        info = _info(location)
    if info is None:
        raise ReaderError(f"{location}: not found; check the URI")
    if info.get("type") != "file":
        raise ReaderError(f"{location}: is a prefix (a folder), not an object; give an image")
    size = int(info.get("size") or 0)
    if size == 0:
        raise ReaderError(f"{location}: object is empty (0 bytes); upload it again")
    return size


def open_object(location: ObjectPath, mode: str = "rb") -> Any:
    """An fsspec file object (range requests on read); close it, or use it in ``with``."""
    with storage_errors(location):
        return filesystem(location).open(location.key, mode)


def sha256_object(location: ObjectPath, block: int = 8 << 20) -> str:
    """sha256 of an object, streamed in blocks so memory stays flat."""
    digest = hashlib.sha256()
    with storage_errors(location), filesystem(location).open(location.key, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def list_under(location: ObjectPath) -> list[str]:
    """Keys under ``location/``, relative to it (one listing, however many objects)."""
    with storage_errors(location, OutputError):
        fs = filesystem(location)
        try:
            found = fs.find(location.key, refresh=True)
        except FileNotFoundError:
            return []
    prefix = location.key + "/"
    return [str(f)[len(prefix) :] for f in found if str(f).startswith(prefix)]


def remove_prefix(location: ObjectPath) -> None:
    """Delete every object under ``location/`` (an existing store, for --overwrite)."""
    with storage_errors(location, OutputError):
        fs = filesystem(location)
        keys = fs.find(location.key, refresh=True)
        if keys:
            fs.rm(keys)
        fs.invalidate_cache(location.key)


def upload(local: Path, location: ObjectPath) -> None:
    """Copy a local file to ``location`` (one object)."""
    with storage_errors(location, OutputError):
        filesystem(location).put_file(str(local), location.key)


def upload_tree(local: Path, location: ObjectPath) -> None:
    """Put every file under the local folder ``local`` below ``location/``, concurrently."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    keys = [f"{location.key}/{p.relative_to(local).as_posix()}" for p in files]
    with storage_errors(location, OutputError):
        fs = filesystem(location)
        fs.put([str(p) for p in files], keys)
        fs.invalidate_cache(location.key)


def download(location: ObjectPath, local: Path) -> None:
    with storage_errors(location):
        filesystem(location).get_file(location.key, str(local))


def cache_folder() -> Path:
    home = os.environ.get("SEGFLOW_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "segflow"
    return base / "objects"


def cached_copy(location: ObjectPath, *, sidecars: tuple[str, ...] = ()) -> Path:
    """A local copy of an object (a model file), kept under its URI and content tag.

    Model loaders need a seekable local file (safetensors maps it, ONNX and TorchScript
    read it whole); the copy is reused while the object's ETag stays the same.
    ``sidecars`` are suffixes of companion objects (``.yaml``) copied when present.
    """
    uri, _, tag = token(location)
    digest = hashlib.sha256(f"{uri}\n{tag}".encode()).hexdigest()[:24]
    folder = cache_folder() / digest
    target = folder / location.name
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_download(location, target)
        for suffix in sidecars:
            companion = location.with_name(location.name + suffix)
            if exists(companion):
                _atomic_download(companion, folder / companion.name)
    return target


def local_copy(text: str) -> Path:
    """A model file named by a path or a URI, as a local path (URIs via :func:`cached_copy`)."""
    location = as_location(text)
    if not isinstance(location, ObjectPath):
        return location
    check_object(location)
    return cached_copy(location, sidecars=(".yaml", ".yml", ".json"))


def _atomic_download(location: ObjectPath, target: Path) -> None:
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    os.close(handle)
    try:
        download(location, Path(partial))
        shutil.move(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
