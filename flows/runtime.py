"""Per-process resources of a flow run: the pipeline, the model, Dask clients, the server.

- the pipeline: a spec file (or defaults) with overrides, read once per flow run;
- the model: loaded once per process and reused by every input's task; an ensemble
  (several model files, or a folder of them) travels as the list of its member files
  and is put together from the loaded members in each task;
- Dask: tasks get a scheduler *address* (a small string) and find this process's live
  client for it here, instead of connecting once per input;
- Prefect: which server flow runs record to (:func:`use_prefect_server`), the temporary
  server of ephemeral mode started in the background, and flow heartbeats dropped when
  they can only cost time.

Nothing here imports Prefect at module level: the command picks options and a server
before paying for that import.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows import server
from segflow.errors import ConfigError
from segflow.models.members import member_files

if TYPE_CHECKING:
    from distributed import Client

    from segflow.engine.ensemble import Ensemble
    from segflow.models import LoadedModel
    from segflow.options import RunOptions
    from segflow.spec import Pipeline

# what flows and tasks pass around for "the model": one file, or an ensemble's member files
ModelRef = str | list[str]
ModelArg = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None

HEARTBEAT_VARIABLES = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
SERVER_HINT = (
    "hint: no Prefect server configured, so this run starts a temporary one (~10 s); "
    "`segflow server start` makes runs start faster"
)


def resolve_pipeline(
    spec: str | os.PathLike[str] | None,
    model: str | os.PathLike[str] | None,
    options: Mapping[str, Any] | None,
) -> Pipeline:
    """The spec file (or defaults) read once, with ``model`` and ``options`` applied.

    ``options`` are flat option names (``RunOptions`` fields; None: not given). The
    model must exist; the pipeline carries its absolute path (an ensemble's members are
    checked, and kept as given).
    """
    from segflow.spec import Pipeline, load_spec

    base = load_spec(spec) if spec is not None else Pipeline()
    pipeline = base.with_overrides(model=model, **dict(options or {}))
    files = pipeline.model_files()  # each must exist, and the weights fit them
    if len(files) > 1 or pipeline.ensemble:  # an ensemble: its entries as the spec gave them
        return pipeline
    return dataclasses.replace(pipeline, model=files[0].resolve())


def model_members(model: ModelArg) -> list[Path]:
    """The model files ``model`` names, absolute: one file, several, or folders of them
    (sorted by name); [] for None. A missing path is a one-line ConfigError."""
    if model is None:
        return []
    given = [model] if isinstance(model, str | os.PathLike) else list(model)
    files = member_files([Path(p) for p in given])
    return [f.absolute() for f in files]  # cluster workers have other working folders


def resolve_run(
    spec: str | os.PathLike[str] | None, model: ModelArg, options: Mapping[str, Any] | None
) -> tuple[Pipeline, ModelRef]:
    """:func:`resolve_pipeline`, where ``model`` (or, without one, the spec's ``model:``) may
    also name an ensemble (several files or a folder of them); returns the pipeline and the
    model as tasks take it."""
    members = model_members(model)
    pipeline = resolve_pipeline(spec, members[0] if members else None, options)
    if not members:  # the spec's model: one file, a list of them or a folder of fold models
        members = [m.absolute() for m in pipeline.model_files()]
    if len(members) > 1:
        return pipeline, [str(m) for m in members]
    return pipeline, str(pipeline.require_model())


def run_weights(pipeline: Pipeline, weights: Sequence[float] | None) -> list[float] | None:
    """The ensemble weights a flow uses: its own parameter, else the spec's ``weights:``."""
    chosen = weights if weights is not None else pipeline.weights
    return None if chosen is None else [float(w) for w in chosen]


def model_ref(model: ModelRef | os.PathLike[str] | Sequence[os.PathLike[str]]) -> ModelRef:
    """A model file or member files as the plain strings task parameters are."""
    if isinstance(model, str | os.PathLike):
        return os.fspath(model)
    return [os.fspath(m) for m in model]


def loaded_models(
    model: ModelRef, weights: Sequence[float] | None = None
) -> LoadedModel | Ensemble:
    """One model, or an ensemble of its member files (each loaded once per process);
    members that disagree, or weights that do not fit, are one-line errors."""
    from segflow.engine.ensemble import load_models

    members = [model] if isinstance(model, str) else list(model)
    return load_models([loaded_model(m) for m in members], weights)


_MODELS: dict[tuple[str, int, int], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def loaded_model(path: os.PathLike[str] | str) -> LoadedModel:
    """Load a model file once per process (and again only when the file changes)."""
    from pathlib import Path

    from segflow.models import load_model

    file = Path(path).absolute()  # tasks may run on workers with other working folders
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = load_model(file)
        return model


# --- Dask ---------------------------------------------------------------------------------------

# Live dask.distributed clients of this process by scheduler address: tasks receive the
# address (a small string) and reuse the flow's client instead of connecting again.
_CLIENTS: dict[str, Client] = {}


def client_for(scheduler: str) -> Client | None:
    """This process's live client for ``scheduler`` (an address), or None (threads, sync)."""
    return _CLIENTS.get(scheduler)


@contextmanager
def dask_scheduler(options: RunOptions) -> Iterator[str]:
    """Yields what tasks pass as ``scheduler``: threads, sync, or a scheduler address.

    ``local`` starts a LocalCluster of worker processes on the loopback interface for
    the duration of the run; an address connects once for the whole run.
    """
    if options.scheduler in ("threads", "sync") or options.scheduler in _CLIENTS:
        yield options.scheduler  # in _CLIENTS: a client handed to run_flow
        return
    if options.scheduler == "local":
        from segflow.engine.cluster import cluster_for

        with (
            cluster_for(options) as client,  # one worker per device when devices are named
            registered(client) as address,
        ):
            yield address
        return
    with _connected(options.scheduler) as client, registered(client, options.scheduler) as key:
        yield key


@contextmanager
def _connected(address: str) -> Iterator[Client]:
    from distributed import Client

    try:
        client: Client = Client(address, timeout="20s")  # type: ignore[no-untyped-call]
    except OSError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        yield client


@contextmanager
def registered(client: Client, address: str | None = None) -> Iterator[str]:
    """Make ``client`` findable by tasks under ``address`` (default: its scheduler's)."""
    if address is None:
        if client.scheduler is None:
            raise ConfigError("the Dask client is not connected to a scheduler")
        address = str(client.scheduler.address)
    key = address
    _CLIENTS[key] = client
    try:
        yield key
    finally:
        _CLIENTS.pop(key, None)


# --- Prefect ------------------------------------------------------------------------------------

_HINTED: list[bool] = []  # the temporary-server hint is printed once per process


def use_prefect_server() -> str | None:
    """The Prefect API this process's flow runs record to, chosen in this order:

    1. the one the user configured (``PREFECT_API_URL`` in the environment or in the
       active Prefect profile);
    2. the server ``segflow server start`` left running, when it still answers
       (``PREFECT_API_URL`` is then set for this process and its children);
    3. None: Prefect's temporary server for this process, with a one-line hint on stderr.
    """
    configured = os.environ.get("PREFECT_API_URL") or _prefect_setting()
    if configured:
        return configured
    record = server.running()
    if record is not None:
        os.environ["PREFECT_API_URL"] = record.url  # Dask workers, serve's flow-run processes
        return record.url
    # only people at a terminal get the hint: scripts and logs keep one line per error
    if not _HINTED and sys.stderr.isatty() and _ephemeral_allowed():
        _HINTED.append(True)
        print(SERVER_HINT, file=sys.stderr)
    return None


def _prefect_setting() -> str | None:
    from prefect.settings import PREFECT_API_URL

    value = PREFECT_API_URL.value()
    return str(value) if value else None


def _ephemeral_allowed() -> bool:
    from prefect.settings import PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    return bool(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value())


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """Flow runs inside record to :func:`use_prefect_server`'s choice.

    Prefect reads its settings once, at import: a server chosen afterwards is applied
    as temporary settings for the block.
    """
    url = use_prefect_server()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if url is None or PREFECT_API_URL.value() == url:
        yield url
        return
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


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
        temporary = SubprocessASGIServer()
        try:
            temporary.start()
        except Exception:
            temporary.stop()

    thread = threading.Thread(target=start, name="segflow-prefect-server", daemon=True)
    thread.start()
    return thread


def load_while_server_starts(
    model: os.PathLike[str] | ModelRef, weights: Sequence[float] | None = None
) -> LoadedModel | Ensemble:
    """Load ``model`` (the tasks reuse it; an ensemble's members are checked now) while a
    temporary server starts, if one is needed."""
    thread = prestart_server()
    try:
        return loaded_models(model_ref(model), weights)
    finally:
        if thread is not None:
            thread.join()
