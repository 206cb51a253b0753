"""Where a batch's outputs stand: absent, partial, complete or foreign.

Inputs themselves are planned by :mod:`segflow.inputs` (re-exported here).
"""

from __future__ import annotations

import os

from segflow.inputs import (
    INPUT_PATTERNS,
    RASTER_PATTERNS,
    VOLUME_PATTERNS,
    InputItem,
    collect_inputs,
    input_stem,
    plan_items,
    read_manifest,
)
from segflow.io.zarr_sink import StoreState, store_state

OutputState = StoreState

__all__ = [
    "INPUT_PATTERNS",
    "RASTER_PATTERNS",
    "VOLUME_PATTERNS",
    "InputItem",
    "OutputState",
    "collect_inputs",
    "input_stem",
    "output_state",
    "plan_items",
    "read_manifest",
]


def output_state(path: str | os.PathLike[str]) -> OutputState:
    """absent, partial (chunks may be done, not finalized), complete, or foreign (not ours)."""
    return store_state(path)
