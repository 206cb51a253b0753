"""URIs beside local paths: ``s3://``, ``gs://``, ``az://``, ``https://`` wherever a path goes.

:class:`ObjectPath` is the small part of pathlib segflow uses on inputs and stores
(``name``, ``stem``, ``parent``, ``/``, ``with_name``, ``exists``, ``stat``), for a
location in object storage; :func:`as_location` turns what a user typed into a
``Path`` or an ``ObjectPath``. File-system work is done by fsspec
(:mod:`segflow.io.remote`), imported only when a URI is used.

Credentials never travel in these values: they come from the environment and
profiles (AWS_*, GOOGLE_*, AZURE_*) and :func:`redact` strips them from any text
that reaches a user, a log or a store.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from segflow.errors import ConfigError

__all__ = [
    "REMOTE_SCHEMES",
    "ObjectPath",
    "as_location",
    "gdal_options",
    "is_uri",
    "redact",
]

# schemes read through fsspec (and GDAL's /vsis3, /vsigs, /vsiaz, /vsicurl for rasters)
REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "http", "https")
_SECRET_NAMES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GOOGLE_APPLICATION_CREDENTIALS",
)
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_QUERY_SECRET = re.compile(
    r"(?P<key>X-Amz-(?:Credential|Signature|Security-Token)|sig|AWSAccessKeyId)=[^&\s]+",
    re.IGNORECASE,
)


def scheme_of(text: str) -> str | None:
    """The URI scheme (lower case) of ``text``, or None for a local path (``file://`` too)."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    if match is None:
        return None
    scheme = match.group(1).lower()
    return None if scheme == "file" else scheme


def is_uri(path: object) -> bool:
    """True for a location in object storage or on a web server (not ``file://``)."""
    if isinstance(path, ObjectPath):
        return True
    return isinstance(path, str) and scheme_of(path) is not None


class ObjectStat(NamedTuple):
    """What ``Path.stat()`` gives that segflow reads: size and a modification stamp."""

    st_size: int
    st_mtime_ns: int


@dataclass(frozen=True)
class ObjectPath:
    """A key in object storage (or a URL), e.g. ``s3://bucket/scenes/a.tif``."""

    uri: str

    def __post_init__(self) -> None:
        scheme = scheme_of(self.uri)
        if scheme is None:
            raise ValueError(f"{self.uri!r} is not a URI")
        if scheme not in REMOTE_SCHEMES:
            raise ConfigError(
                f"{scheme}:// is not a storage segflow reads ({', '.join(REMOTE_SCHEMES)})"
            )
        head, _, rest = self.uri.partition("://")
        object.__setattr__(self, "uri", f"{head.lower()}://{rest.rstrip('/')}")

    # -- pure path arithmetic ------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return self.uri.partition("://")[0]

    @property
    def key(self) -> str:
        """``bucket/prefix/name``: the path fsspec file systems take."""
        return self.uri.partition("://")[2]

    @property
    def bucket(self) -> str:
        return self.key.partition("/")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def suffix(self) -> str:
        name = self.name
        dot = name.rfind(".")
        return name[dot:] if dot > 0 else ""

    @property
    def stem(self) -> str:
        suffix = self.suffix
        return self.name[: -len(suffix)] if suffix else self.name

    @property
    def parent(self) -> ObjectPath:
        head = self.key.rpartition("/")[0]
        return self if not head else ObjectPath(f"{self.scheme}://{head}")

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(f"{self.uri}/{str(name).strip('/')}")

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def resolve(self) -> ObjectPath:
        return self

    def absolute(self) -> ObjectPath:
        return self

    def expanduser(self) -> ObjectPath:
        return self

    def __str__(self) -> str:
        return self.uri

    # -- questions for the storage (fsspec, imported here only) --------------------------

    def exists(self) -> bool:
        from segflow.io import remote

        return remote.exists(self)

    def is_dir(self) -> bool:
        """A "folder": some key lies under this prefix (a Zarr store, a batch of scenes)."""
        from segflow.io import remote

        return remote.is_prefix(self)

    def is_file(self) -> bool:
        from segflow.io import remote

        return remote.is_object(self)

    def is_symlink(self) -> bool:
        return False

    def stat(self) -> ObjectStat:
        from segflow.io import remote

        return remote.stat(self)


Location = Path | ObjectPath


def as_location(path: str | os.PathLike[str] | ObjectPath) -> Path | ObjectPath:
    """An ObjectPath for a URI, else a local Path (``~`` expanded, ``file://`` stripped)."""
    if isinstance(path, ObjectPath | Path):
        return path.expanduser()
    text = os.fspath(path)
    if is_uri(text):
        return ObjectPath(text)
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    return Path(text).expanduser()


def endpoint_url(scheme: str = "s3") -> str | None:
    """The S3-compatible endpoint from the environment (AWS_ENDPOINT_URL_S3 first)."""
    if scheme != "s3":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def gdal_options() -> dict[str, Any]:
    """GDAL settings for /vsis3 and friends, derived from the usual environment.

    GDAL reads AWS_* credentials itself but not the boto-style AWS_ENDPOINT_URL:
    an S3-compatible server needs its host in AWS_S3_ENDPOINT, https on or off, and
    path-style addressing. Settings the user gave GDAL directly are kept.
    """
    options: dict[str, Any] = {
        # open one object, not a listing of its "folder" (slow and often not allowed)
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        # neighbouring tiles of one read come in one request
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
    }
    endpoint = endpoint_url()
    if endpoint and "AWS_S3_ENDPOINT" not in os.environ:
        parts = urlsplit(endpoint)
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "YES" if parts.scheme == "https" else "NO"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return {k: v for k, v in options.items() if k not in os.environ}


def redact(text: str) -> str:
    """``text`` without credentials: secret values from the environment, URL user info
    and signed-URL query parameters are replaced by ``***``."""
    for name in _SECRET_NAMES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _QUERY_SECRET.sub(r"\g<key>=***", text)
