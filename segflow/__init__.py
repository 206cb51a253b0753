"""segflow: out-of-core tiled segmentation of large GeoTIFFs and NIfTI volumes into Zarr.

The facade. ``import segflow`` is cheap: torch, rasterio and zarr load on first use
of what needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from segflow.version import __version__

# public name -> the module that defines it, imported on first use
_LAZY = {
    "segment": "segflow.api",
    "RunResult": "segflow.api",
    "RunOptions": "segflow.options",
    "open_source": "segflow.io.open",
    "load_model": "segflow.models",
    "load_spec": "segflow.spec",
    "tune_process": "segflow.heap",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'segflow' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return __all__
