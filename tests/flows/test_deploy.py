"""The scheduled deployment: prefect.yaml, the served deployment, and `segflow serve` for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.deploy import (
    DEFAULT_CRON,
    PROJECT_FILE,
    cron_schedule,
    landcover_deployment,
    landcover_parameters,
    validate_project_file,
)
from flows.landcover import landcover_mapping
from segflow.errors import ConfigError

from .conftest import write_scene

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_deployments_validate():
    deployments = {d.name: d for d in validate_project_file(PROJECT_FILE)}
    nightly = deployments["nightly-landcover"]
    assert nightly.flow.name == landcover_mapping.name
    assert [s.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.schedules[0].timezone == "UTC"
    assert nightly.parameters["spec"].endswith("pipelines/landcover.yaml")
    assert nightly.work_pool == "segflow"
    assert deployments["hospital-batch"].flow.name == "hospital-batch"
    # Prefect's own reader of prefect.yaml accepts the file as well
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load(PROJECT_FILE.read_text()))
    assert {d.name for d in model.deployments} == set(deployments)


def test_prefect_yaml_mistakes_are_caught(tmp_path):
    data = yaml.safe_load(PROJECT_FILE.read_text())
    data["deployments"][0]["parameters"]["input_dri"] = "/data/scenes"
    bad_params = tmp_path / "params.yaml"
    bad_params.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="parameters do not fit"):
        validate_project_file(bad_params, root=REPO)
    data = yaml.safe_load(PROJECT_FILE.read_text())
    data["deployments"][0]["schedules"][0]["cron"] = "0 25 * * *"
    bad_cron = tmp_path / "cron.yaml"
    bad_cron.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="invalid schedule"):
        validate_project_file(bad_cron, root=REPO)
    data = yaml.safe_load(PROJECT_FILE.read_text())
    data["deployments"][0]["entrypoint"] = "flows/landcover.py:no_such_flow"
    bad_entry = tmp_path / "entry.yaml"
    bad_entry.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="cannot load entrypoint"):
        validate_project_file(bad_entry, root=REPO)


def test_landcover_deployment_schedule_and_parameters(models, tmp_path):
    deployment = landcover_deployment(
        tmp_path / "in",
        tmp_path / "out",
        model=models["bands4"],
        options={"device": "cpu"},
        cron="30 1 * * 1-5",
        timezone="Europe/Paris",
    )
    assert deployment.name == "nightly-landcover"
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "30 1 * * 1-5"
    assert schedule.schedule.timezone == "Europe/Paris"
    assert deployment.parameters == {
        "input_dir": str(tmp_path / "in"),
        "output_dir": str(tmp_path / "out"),
        "concurrency": 1,
        "model": str(models["bands4"]),
        "options": {"device": "cpu"},
    }
    assert deployment.entrypoint == "flows.landcover.landcover_mapping"
    landcover_mapping.validate_parameters(deployment.parameters)
    assert cron_schedule(DEFAULT_CRON).cron == DEFAULT_CRON
    with pytest.raises(ConfigError, match="invalid schedule"):
        cron_schedule("every night")
    with pytest.raises(ConfigError, match="parameters do not fit"):
        landcover_parameters(tmp_path, tmp_path, options="not a dict")  # type: ignore[arg-type]


def test_a_deployment_can_serve_an_ensemble(models, tmp_path):
    folds = [models["rgb"], tmp_path / "rgb2.safetensors"]
    folds[1].write_bytes(models["rgb"].read_bytes())
    deployment = landcover_deployment(tmp_path / "in", tmp_path / "out", model=folds)
    assert deployment.parameters["model"] == [str(f) for f in folds]
    landcover_mapping.validate_parameters(deployment.parameters)
    one = landcover_parameters(tmp_path, tmp_path, model=[models["rgb"]])
    assert one["model"] == str(models["rgb"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["bands4"], "ensemble models disagree on input channels"),
        (["missing"], "missing.safetensors not found"),
    ],
)
def test_segflow_serve_refuses_a_bad_ensemble_in_one_line(models, tmp_path, extra, message):
    from typer.testing import CliRunner

    from segflow.cli.main import app

    paths = {"bands4": models["bands4"], "missing": tmp_path / "missing.safetensors"}
    args = ["serve", str(tmp_path), str(tmp_path / "out"), "-m", str(models["rgb"])]
    result = CliRunner().invoke(app, [*args, "-m", str(paths[extra[0]])])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


@pytest.mark.slow
def test_segflow_serve_starts_runs_once_and_stops(prefect_server, models, tmp_path):
    from prefect import get_client
    from prefect.deployments import run_deployment

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_scene(scenes / "night1.tif", seed=5)
    out = tmp_path / "maps"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    name = f"serve-test-{os.getpid()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "segflow.cli.flows",
            "serve",
            str(scenes),
            str(out),
            "--model",
            str(models["rgb"]),
            "--cron",
            "0 3 * * *",
            "--name",
            name,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deployment = None
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while deployment is None and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                try:
                    deployment = client.read_deployment_by_name(f"landcover-mapping/{name}")
                except Exception:
                    time.sleep(0.5)
        assert deployment is not None, "the served deployment never appeared"
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        assert deployment.parameters["input_dir"] == str(scenes)
        run = run_deployment(
            f"landcover-mapping/{name}",
            parameters={"options": {"device": "cpu"}},
            timeout=240,
            poll_interval=1,
        )
        assert run.state is not None and run.state.is_completed(), run.state
        assert (out / "night1.zarr" / "zarr.json").is_file()
        assert list((out / "reports").glob("landcover-*.json"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("segflow serve did not stop on SIGTERM")
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""


def _pull_steps() -> list[dict]:
    """prefect.yaml's pull steps as `prefect deploy` reads them (Prefect's own loader)."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from rich.console import Console

    configs, actions = _load_deploy_configs_and_actions(PROJECT_FILE, console=Console())
    assert {c["name"] for c in configs} == {"nightly-landcover", "hospital-batch"}
    return actions["pull"]


@pytest.mark.parametrize("env", ["unset", "set"])
def test_a_deployed_run_works_in_the_project_from_any_folder(
    prefect_server, tmp_path, monkeypatch, env
):
    """The worker's side of a deployment: pull steps (templated from its environment, as
    Prefect does), then the entrypoint and the spec parameter relative to that folder."""
    from prefect.deployments.steps.core import run_steps
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.deploy import PROJECT_ENV
    from segflow.spec import load_spec

    monkeypatch.chdir(tmp_path)  # a process worker starts runs in a folder of its own
    if env == "set":
        monkeypatch.setenv(PROJECT_ENV, str(REPO))
    else:
        monkeypatch.delenv(PROJECT_ENV, raising=False)
    output = run_coro_as_sync(run_steps(_pull_steps()))
    assert Path.cwd() == REPO and output["directory"] == str(REPO)
    configs = {d.name: d for d in validate_project_file(PROJECT_FILE)}
    for deployment in configs.values():
        flow = load_flow_from_entrypoint(deployment.entrypoint, use_placeholder_flow=False)
        assert flow.name == deployment.flow.name
        assert load_spec(deployment.parameters["spec"]).model is not None


def test_a_worker_pointed_at_another_folder_fails_in_one_line(
    prefect_server, tmp_path, monkeypatch
):
    from prefect.deployments.steps.core import StepExecutionError, run_steps
    from prefect.utilities.asyncutils import run_coro_as_sync

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGFLOW_PROJECT", str(tmp_path))
    with pytest.raises(StepExecutionError) as info:
        run_coro_as_sync(run_steps(_pull_steps()))
    assert "is not a segflow project folder" in str(info.value.__cause__)
    assert Path.cwd() == tmp_path


def _prefect(*args: str, cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_prefect_yaml_deployment_runs_through_a_process_worker(prefect_server, tmp_path):
    """`prefect deploy` from prefect.yaml, a run with this machine's folders as parameters,
    and a process worker started in another folder without SEGFLOW_PROJECT runs it."""
    import json

    scenes, maps = tmp_path / "scenes", tmp_path / "maps"
    scenes.mkdir()
    write_scene(scenes / "a.tif", bands=4)
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("SEGFLOW_PROJECT", None)
    subprocess.run(
        [
            str(Path(sys.executable).parent / "prefect"),
            "work-pool",
            "create",
            "segflow",
            "--type",
            "process",
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )  # exists already when an earlier test made it
    _prefect("deploy", "--name", "nightly-landcover", cwd=REPO, env=env)
    params = {
        "input_dir": str(scenes),
        "output_dir": str(maps),
        "options": {"scheduler": "threads", "device": "cpu"},
        "report_dir": str(tmp_path / "reports"),
    }
    _prefect(
        "deployment",
        "run",
        "landcover-mapping/nightly-landcover",
        "--params",
        json.dumps(params),
        cwd=tmp_path,
        env=env,
    )
    worker = tmp_path / "worker"
    worker.mkdir()
    _prefect(
        "worker",
        "start",
        "--pool",
        "segflow",
        "--type",
        "process",
        "--run-once",
        cwd=worker,
        env=env,
        timeout=400,
    )
    from segflow.io.zarr_sink import store_state

    assert store_state(maps / "a.zarr") == "complete"
