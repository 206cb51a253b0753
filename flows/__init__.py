"""Prefect flows over the segflow library: thin wrappers, no engine logic.

- :mod:`flows.segment`: ``segment`` / ``segment_batch`` flows (one task per input) and
  ``run_flow``, which ``segflow run`` calls;
- :mod:`flows.landcover`: scheduled bulk land-cover mapping (only scenes without a
  complete output);
- :mod:`flows.hospital`: NIfTI scan batches with per-scan isolation and a volume report;
- :mod:`flows.deploy`: the nightly deployment, ``serve`` and prefect.yaml checks;
- :mod:`flows.report`: report files, artifacts, class areas and volumes;
- :mod:`flows.inputs`: where a batch's outputs stand (inputs are planned by segflow.inputs);
- :mod:`flows.runtime`: the pipeline of a run, per-process model cache, Dask clients, and
  which Prefect server runs record to (:func:`flows.runtime.use_prefect_server`);
- :mod:`flows.server`: the local server of ``segflow server start|status|stop``.

Importing this package is cheap; Prefect loads with the submodules. The one-input flow
is ``flows.segment.segment`` (``flows.segment`` itself is the module).
"""

from __future__ import annotations

import os
from typing import Any

# Offline machines: Prefect's server must not try to send analytics.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A loaded 2-core machine can take longer than Prefect's default 20 s to start its
# temporary server; a timed-out start also leaves its process behind.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

_EXPORTS = {
    "segment_batch": "flows.segment",
    "run_flow": "flows.segment",
    "landcover_mapping": "flows.landcover",
    "hospital_batch": "flows.hospital",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
