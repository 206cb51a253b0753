"""Deployments: the nightly land-cover mapping, served by ``segflow serve`` or by a worker.

Two ways to run the scheduled flow, with the same flow and parameters:

- ``segflow serve`` (:func:`serve_landcover`): one long-running process that registers
  the deployment with its cron schedule and runs the flow runs itself; Ctrl-C or
  SIGTERM stops it.
- ``prefect deploy`` with the repository's ``prefect.yaml`` (the docker compose setup):
  a Prefect worker in a work pool runs the flow runs. :func:`validate_project_file`
  checks that file the way a deploy would use it: entrypoint, cron, parameters.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import yaml
from prefect import Flow, serve
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from flows.landcover import landcover_mapping
from segflow.errors import ConfigError

DEPLOYMENT_NAME = "nightly-landcover"
DEFAULT_CRON = "0 2 * * *"  # every night at 02:00
DEFAULT_TIMEZONE = "UTC"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILE = PROJECT_ROOT / "prefect.yaml"

ModelPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


def landcover_parameters(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    spec: str | os.PathLike[str] | None = None,
    model: ModelPaths = None,
    options: dict[str, Any] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    concurrency: int = 1,
) -> dict[str, Any]:
    """Deployment parameters, absolute paths (a run may start in another folder), validated.

    ``model``: a model file, a folder of fold models, or several files (an ensemble).
    """
    params: dict[str, Any] = {
        "input_dir": _absolute(input_dir),
        "output_dir": _absolute(output_dir),
        "concurrency": concurrency,
    }
    for key, value in (("spec", spec), ("report_dir", report_dir)):
        if value is not None:
            params[key] = _absolute(value)
    if model is not None:
        given = [model] if isinstance(model, str | os.PathLike) else list(model)
        paths = [_absolute(m) for m in given]
        params["model"] = paths[0] if len(paths) == 1 else paths
    if options:
        params["options"] = options
    return _validated(landcover_mapping, params, "landcover deployment")


def landcover_deployment(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    spec: str | os.PathLike[str] | None = None,
    model: ModelPaths = None,
    options: dict[str, Any] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    name: str = DEPLOYMENT_NAME,
    paused: bool = False,
) -> RunnerDeployment:
    """The scheduled land-cover deployment (for ``serve``); the flow is imported by module path."""
    cron_schedule(cron, timezone)  # a one-line error for a bad cron or zone
    params = landcover_parameters(
        input_dir, output_dir, spec=spec, model=model, options=options, report_dir=report_dir
    )
    deployment = landcover_mapping.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        parameters=params,
        paused=paused,
        description="Nightly land-cover mapping of new scenes (segflow).",
        tags=["segflow", "landcover"],
        entrypoint_type=EntrypointType.MODULE_PATH,  # works whatever the current folder is
    )
    return cast(RunnerDeployment, deployment)  # sync call: not a coroutine


def serve_landcover(deployment: RunnerDeployment, *, limit: int | None = 1) -> None:
    """Serve until Ctrl-C or SIGTERM; ``limit`` caps concurrent flow runs (one GPU, one run)."""
    with _sigterm_as_interrupt():
        serve(deployment, limit=limit, print_starting_message=True)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A container stop (SIGTERM) shuts the runner down like Ctrl-C does."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cron_schedule(cron: str, timezone: str = DEFAULT_TIMEZONE) -> CronSchedule:
    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValueError as exc:
        first = str(exc).splitlines()
        detail = first[-1].strip() if first else str(exc)
        raise ConfigError(
            f"invalid schedule cron={cron!r} timezone={timezone!r}: {detail}; "
            "use five cron fields like '0 2 * * *' and an IANA zone like 'UTC'"
        ) from None


# --- prefect.yaml -----------------------------------------------------------------------------

PROJECT_ENV = "SEGFLOW_PROJECT"  # the worker's segflow checkout, when not where flows/ is imported


def enter_project(directory: str = "") -> dict[str, str]:
    """prefect.yaml's pull step: run the flow in the segflow project folder.

    ``directory`` comes from ``{{ $SEGFLOW_PROJECT }}`` in the worker's environment; when
    that is unset (empty), the folder ``flows`` is imported from. So a process worker
    started from any checkout (or the image, which sets it) finds the entrypoints and
    ``pipelines/``, and no path of one machine is baked into the deployment.
    """
    target = Path(directory).expanduser() if directory.strip() else PROJECT_ROOT
    if not (target / "flows").is_dir():
        raise ConfigError(
            f"{target} is not a segflow project folder (no flows/ in it); set {PROJECT_ENV} "
            "to the checkout the worker runs"
        )
    os.chdir(target)
    return {"directory": str(target)}


@dataclass(frozen=True)
class ProjectDeployment:
    """One deployment of prefect.yaml, checked: its flow, schedules and parameters load."""

    name: str
    entrypoint: str
    flow: Flow[Any, Any]
    schedules: tuple[CronSchedule, ...]
    parameters: dict[str, Any]
    work_pool: str | None


def validate_project_file(
    path: str | os.PathLike[str] = PROJECT_FILE, *, root: str | os.PathLike[str] | None = None
) -> list[ProjectDeployment]:
    """Check every deployment in a prefect.yaml: entrypoint, cron schedules, parameters.

    Entrypoints are relative to ``root`` (default: the file's folder, as for ``prefect deploy``).
    """
    file = Path(path)
    base = Path(root) if root is not None else file.parent
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), list):
        raise ConfigError(f"{file}: expected a mapping with a 'deployments' list")
    checked = []
    for number, entry in enumerate(data["deployments"], start=1):
        where = f"{file}: deployment {entry.get('name', number)!r}"
        entrypoint = str(entry.get("entrypoint") or "")
        if not entry.get("name") or not entrypoint:
            raise ConfigError(f"{where}: needs a name and an entrypoint")
        flow = _load_entrypoint(entrypoint, base, where)
        schedules = tuple(
            cron_schedule(str(s["cron"]), str(s.get("timezone") or DEFAULT_TIMEZONE))
            for s in entry.get("schedules") or []
            if isinstance(s, dict) and "cron" in s
        )
        params = _validated(flow, dict(entry.get("parameters") or {}), where)
        pool = entry.get("work_pool") or {}
        checked.append(
            ProjectDeployment(
                name=str(entry["name"]),
                entrypoint=entrypoint,
                flow=flow,
                schedules=schedules,
                parameters=params,
                work_pool=pool.get("name") if isinstance(pool, dict) else None,
            )
        )
    return checked


def _load_entrypoint(entrypoint: str, root: Path, where: str) -> Flow[Any, Any]:
    target = entrypoint
    if ":" in entrypoint:
        script, name = entrypoint.rsplit(":", 1)
        if not Path(script).is_absolute():
            target = f"{root / script}:{name}"
    try:
        flow: Any = load_flow_from_entrypoint(target, use_placeholder_flow=False)
    except Exception as exc:  # prefect raises ScriptError / MissingFlowError / ImportError
        raise ConfigError(f"{where}: cannot load entrypoint {entrypoint}: {exc}") from None
    if not isinstance(flow, Flow):
        raise ConfigError(f"{where}: {entrypoint} is not a flow")
    return flow


def _validated(flow: Flow[Any, Any], params: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        flow.validate_parameters(params)
    except Exception as exc:  # ParameterTypeError / SignatureMismatchError
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{where}: parameters do not fit flow {flow.name!r}: {detail}") from None
    return params


def _absolute(path: str | os.PathLike[str]) -> str:
    return str(Path(path).expanduser().resolve())
