"""segflow: out-of-core tiled segmentation of large GeoTIFFs and NIfTI volumes into Zarr."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("segflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "segment"]


def __getattr__(name: str) -> Any:
    # keep `import segflow` light: torch, rasterio and zarr load on first use
    if name == "segment":
        from segflow.api import segment

        return segment
    raise AttributeError(f"module 'segflow' has no attribute {name!r}")
