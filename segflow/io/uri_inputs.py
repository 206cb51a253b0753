"""Batches in object storage: a prefix or a glob of keys becomes a list of inputs.

``s3://bucket/scenes/`` lists the images under that prefix (one listing), and
``s3://bucket/scenes/*.tif`` matches keys as a local glob matches files, so a
nightly batch can point at the folder its scenes are delivered to.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from segflow.errors import ConfigError
from segflow.io.uris import ObjectPath

__all__ = ["expand_uri", "is_one_uri"]

_GLOB = "*?["


def is_one_uri(location: ObjectPath) -> bool:
    """One object: no glob, and a name with a suffix (a prefix has none, by convention)."""
    return not any(ch in location.uri for ch in _GLOB) and bool(location.suffix)


def expand_uri(
    location: ObjectPath, patterns: Sequence[str]
) -> list[tuple[str | None, ObjectPath]]:
    """The inputs a URI stands for; an object stands for itself (checked when it is read)."""
    if is_one_uri(location):
        return [(None, location)]
    from segflow.io import remote

    fs = remote.filesystem(location)
    with remote.storage_errors(location, ConfigError):
        if any(ch in location.uri for ch in _GLOB):
            keys = sorted(str(k) for k in fs.glob(location.key))
            if not keys:
                raise ConfigError(f"no objects match {location}; check the pattern")
            return [(None, ObjectPath(f"{location.scheme}://{k}")) for k in keys]
        keys = sorted(str(k) for k in fs.find(location.key))
    names = [k for k in keys if any(fnmatch.fnmatch(k.rpartition("/")[2], p) for p in patterns)]
    if not names:
        raise ConfigError(
            f"no inputs under {location}/ (looked for {', '.join(patterns)}); check the prefix"
        )
    return [(None, ObjectPath(f"{location.scheme}://{k}")) for k in names]
