"""Where a batch's outputs stand: absent, partial, complete or foreign.

Inputs themselves are planned by :mod:`segflow.inputs` (re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from segflow.errors import SegflowError
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

OutputState = Literal["absent", "partial", "complete", "foreign"]

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
    from segflow.io.zarr_sink import ZarrSink

    target = Path(path)
    if not target.exists():
        return "absent"
    try:
        return "complete" if ZarrSink.open(target).is_complete else "partial"
    except SegflowError:
        return "foreign"
