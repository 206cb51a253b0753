"""segflow: out-of-core tiled segmentation of large GeoTIFFs and NIfTI volumes into Zarr.

The facade: ``import segflow`` is cheap; torch, rasterio and zarr load on first use
of what needs them.
"""

from __future__ import annotations

from typing import Any

from segflow.version import __version__

__all__ = ["__version__", "segment"]


def __getattr__(name: str) -> Any:
    if name == "segment":
        from segflow.api import segment

        return segment
    raise AttributeError(f"module 'segflow' has no attribute {name!r}")
