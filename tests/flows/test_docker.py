"""docker/: compose stack and Dockerfiles, checked statically (no Docker engine here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())  # resolves the << merges


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def command(service: dict) -> str:
    cmd = service["command"]
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_services_and_their_dependencies(compose):
    services = compose["services"]
    assert set(services) == {
        "prefect-server",
        "prefect-deploy",
        "prefect-worker",
        "dask-scheduler",
        "dask-worker",
        "dask-gpu-worker",
        "object-store",
        "object-store-init",
    }
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        if name.startswith("object-store"):
            continue  # a stock S3-compatible server and its client, not built from here
        build = service["build"]
        assert (REPO / build["dockerfile"]).is_file() and (
            DOCKER / build["context"]
        ).resolve() == REPO
    assert "prefect server start" in command(services["prefect-server"])
    assert "prefect --no-prompt deploy --all" in command(services["prefect-deploy"])
    assert services["prefect-worker"]["depends_on"]["prefect-deploy"]["condition"] == (
        "service_completed_successfully"
    )


def test_workers_share_the_data_volume_and_the_api(compose):
    services = compose["services"]
    assert "data" in compose["volumes"]
    for name in ("prefect-worker", "dask-worker", "dask-gpu-worker", "dask-scheduler"):
        assert "data:/data" in services[name]["volumes"], name
        assert services[name]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_gpu_worker_runs_one_gpu_task_at_a_time(compose):
    gpu = compose["services"]["dask-gpu-worker"]
    cmd = command(gpu)
    assert "--resources GPU=1" in cmd and "--nthreads 1" in cmd
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "--resources" not in command(compose["services"]["dask-worker"])


def test_compose_agrees_with_prefect_yaml(compose, project):
    services = compose["services"]
    pool = re.search(r"--pool (\S+)", command(services["prefect-worker"])).group(1)
    scheduler = re.search(r"--port (\d+)", command(services["dask-scheduler"])).group(1)
    for deployment in project["deployments"]:
        assert deployment["work_pool"]["name"] == pool
        assert (
            deployment["parameters"]["options"]["scheduler"] == f"tcp://dask-scheduler:{scheduler}"
        )
        assert deployment["parameters"]["spec"].startswith("pipelines/")
        assert (REPO / deployment["parameters"]["spec"]).is_file()  # relative to the project
    assert f"--pool {pool}" in command(services["prefect-worker"])
    assert f"create {pool}" in command(services["prefect-deploy"])
    pull = project["pull"][0]["flows.deploy.enter_project"]["directory"]
    assert pull == "{{ $SEGFLOW_PROJECT }}"
    assert compose["x-segflow"]["environment"]["SEGFLOW_PROJECT"] == "/opt/segflow"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles(name):
    text = (DOCKER / name).read_text()
    lines = [
        ln.strip()
        for ln in re.sub(r"\\\n", " ", text).splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", "\n".join(lines), flags=re.M))
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    for image in froms:
        resolved = args.get(image.strip("${}"), image)
        assert ":" in resolved, f"{name}: base image {resolved} has no tag"
    for ln in lines:
        if ln.startswith("COPY ") and "--from=" not in ln:
            for source in ln.split()[1:-1]:
                assert (REPO / source).exists(), f"{name}: COPY source {source} missing"
    assert "uv sync --frozen --no-dev" in text  # the locked set, no dev tools
    assert "WORKDIR /opt/segflow" in text  # SEGFLOW_PROJECT in the compose file
    assert re.search(r"^USER (?!root)\w+", text, flags=re.M)
    assert (DOCKER / f"{name}.dockerignore").is_file()


def test_docker_compose_config_when_available(tmp_path):
    """`docker compose config` (v2) or `docker-compose config` (v1) parses the stack."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        cmd = ["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"]
    elif shutil.which("docker-compose"):
        # v1 predates the top-level `name:`; check the rest (paths relative to docker/)
        text = (DOCKER / "compose.yaml").read_text()
        copy = tmp_path / "compose-v1.yaml"
        copy.write_text(re.sub(r"^name: .*\n", "", text, flags=re.M))
        cmd = ["docker-compose", "--project-directory", str(DOCKER), "-f", str(copy),
               "config", "--quiet"]  # fmt: skip
    else:
        pytest.skip("neither docker compose nor docker-compose is installed")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=DOCKER, timeout=60)
    assert result.returncode == 0, result.stderr


def test_workers_start_with_the_engines_heap_settings(compose):
    for name in ("dask-worker", "dask-gpu-worker"):
        command = compose["services"][name]["command"]
        preload = command.index("--preload-nanny")
        assert command[preload + 1] == "segflow.heap", name


def test_workers_share_an_object_store_instead_of_a_folder(compose):
    services = compose["services"]
    store = services["object-store"]
    assert all(p.startswith("127.0.0.1:") for p in store["ports"])
    assert "object-store-init" in services
    for name in ("prefect-worker", "dask-worker", "dask-gpu-worker"):
        env = services[name]["environment"]
        assert env["AWS_ENDPOINT_URL"] == "http://object-store:9000", name
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env), name
    for name in ("prefect-worker", "dask-worker"):
        assert "object-store-init" in services[name]["depends_on"], name
