"""Per-process resources of a flow run: the pipeline, the model, Dask clients, the server.

- the pipeline: a spec file (or defaults) with command-line overrides, model checked;
- the model: loaded once per process and reused by every input's task;
- Dask: tasks get a scheduler *address* (a small string) and find this process's live
  client for it here, instead of connecting once per input;
- Prefect: the temporary server of ephemeral mode started in the background, and flow
  heartbeats dropped when they can only cost time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segflow.errors import ConfigError
from segflow.spec import DaskSpec, PipelineSpec, load_spec, merge_overrides

if TYPE_CHECKING:
    from segflow.models import LoadedModel

HEARTBEAT_VARIABLES = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def resolve_pipeline(
    spec: str | os.PathLike[str] | PipelineSpec | None,
    model: str | os.PathLike[str] | None,
    options: dict[str, Any] | None,
) -> tuple[PipelineSpec, Path]:
    """The spec file (or defaults) with ``model`` and ``options`` applied; the model must exist."""
    if isinstance(spec, PipelineSpec):
        base = spec
    elif spec is not None:
        base = load_spec(spec)
    else:
        base = PipelineSpec()
    merged = merge_overrides(
        base, model=Path(model) if model is not None else None, **(options or {})
    )
    return merged, merged.require_model().resolve()


_MODELS: dict[tuple[str, int, int], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def loaded_model(path: Path) -> LoadedModel:
    """Load a model file once per process (and again only when the file changes)."""
    from segflow.models import load_model

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = load_model(path)
        return model


# Live dask.distributed clients of this process by scheduler address: tasks receive the
# address (a small string) and reuse the flow's client instead of connecting again.
_CLIENTS: dict[str, Any] = {}


def scheduler_for_task(value: str) -> Any:
    return _CLIENTS.get(value, value)


@contextmanager
def dask_scheduler(spec: DaskSpec) -> Iterator[str]:
    """Yields what tasks pass as ``scheduler``: threads, sync, or a scheduler address.

    ``local`` starts a LocalCluster of worker processes on the loopback interface for
    the duration of the run; an address connects once for the whole run.
    """
    if spec.scheduler in ("threads", "sync"):
        yield spec.scheduler
        return
    import dask
    from distributed import Client, LocalCluster

    from segflow.heap import heap_environment

    if spec.scheduler == "local":
        # workers start with the heap settings region tasks run under (see segflow.heap)
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **heap_environment()}
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
            LocalCluster(
                n_workers=spec.workers or 2,
                threads_per_worker=spec.threads_per_worker,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as client,
            _registered(client) as address,
        ):
            yield address
        return
    if spec.scheduler in _CLIENTS:  # a client handed to run_flow
        yield spec.scheduler
        return
    try:
        client = Client(spec.scheduler, timeout="20s")
    except OSError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {spec.scheduler}: {exc}") from None
    with client, _registered(client, spec.scheduler) as address:
        yield address


@contextmanager
def _registered(client: Any, address: str | None = None) -> Iterator[str]:
    key = address or str(client.scheduler.address)
    _CLIENTS[key] = client
    try:
        yield key
    finally:
        _CLIENTS.pop(key, None)


def one_off_run_settings() -> AbstractContextManager[Any]:
    """No flow-run heartbeats when the server is this process's temporary one.

    Heartbeats let a server notice a crashed run; a temporary server stops with the
    process, so they only cost the run ~1 s at its end (the heartbeat thread sleeps in
    1 s steps). With a configured server (PREFECT_API_URL) they stay on.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    explicit = any(k in os.environ for k in HEARTBEAT_VARIABLES)
    if PREFECT_API_URL.value() or explicit:
        return nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def prestart_server() -> threading.Thread | None:
    """Start Prefect's temporary server now, in parallel with loading the model.

    Only when no server is configured; the flow run later finds it already up. If the
    start fails, its process is stopped (none left behind) and the flow run tries again.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    def start() -> None:
        server = SubprocessASGIServer()
        try:
            server.start()
        except Exception:
            server.stop()

    thread = threading.Thread(target=start, name="segflow-prefect-server", daemon=True)
    thread.start()
    return thread
