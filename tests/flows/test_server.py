"""`segflow server`: a real Prefect server on loopback that a real `segflow run` records to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_scene

SEGFLOW = str(Path(sys.executable).parent / "segflow")


def _segflow(
    *args: str | Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEGFLOW, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def _flow_runs(url: str) -> list[str]:
    """The flow runs recorded on the server at ``url``, by flow name (Prefect client query)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: url}),
        get_client(sync_client=True) as client,
    ):
        runs = client.read_flow_runs()
        names = {f.id: f.name for f in client.read_flows()}
    return [f"{names[r.flow_id]}:{r.state_type.value if r.state_type else None}" for r in runs]


@pytest.mark.slow
def test_a_run_records_to_the_started_server(models, tmp_path, monkeypatch):
    # nothing of the user's: own SEGFLOW_HOME and Prefect home (its database), no API URL
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        SEGFLOW_HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    started = _segflow("server", "start", env=env, timeout=240)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        status = _segflow("server", "status", env=env, timeout=60)
        assert status.returncode == 0 and "running at http://127.0.0.1:" in status.stdout
        url = status.stdout.split("running at ", 1)[1].split()[0]

        scene = write_scene(tmp_path / "one.tif")
        run = _segflow(
            "run", scene, "-m", models["rgb"], "-o", tmp_path / "one.zarr", "--device", "cpu",
            "--no-progress", env=env,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "hint:" not in run.stderr  # no temporary server was needed
        assert "Starting temporary server" not in run.stdout + run.stderr
        assert (tmp_path / "one.zarr").is_dir()
        assert _flow_runs(url) == ["segment:COMPLETED"]
    finally:
        stopped = _segflow("server", "stop", env=env, timeout=60)
        if stopped.returncode != 0:  # never leave the server behind, whatever broke
            from flows import server

            monkeypatch.setenv("SEGFLOW_HOME", env["SEGFLOW_HOME"])
            server.stop()
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout
    after = _segflow("server", "status", env=env, timeout=60)
    assert after.returncode == 1 and "segflow server start" in after.stdout
