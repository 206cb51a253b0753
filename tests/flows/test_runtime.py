"""Per-process resources of flow runs: the pipeline, the LocalCluster a run starts, the server."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from flows import runtime, server
from flows.runtime import client_for, dask_scheduler, resolve_pipeline, use_prefect_server
from segflow.errors import ConfigError
from segflow.heap import OPENMP_SETTINGS, heap_environment, worker_environment
from segflow.options import BlendMode, RunOptions


def _heap_variables() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in {**heap_environment(), **OPENMP_SETTINGS}}


def test_local_cluster_workers_start_with_the_engines_heap_settings():
    with dask_scheduler(RunOptions(scheduler="local", workers=1)) as address:
        client = client_for(address)
        assert client is not None
        [seen] = client.run(_heap_variables).values()
    expected = worker_environment()  # the user's own MALLOC_* settings would stay theirs
    assert {name: seen[name] for name in expected} == expected
    assert client_for(address) is None  # forgotten with the cluster


def test_threads_and_sync_need_no_client():
    for name in ("threads", "sync"):
        with dask_scheduler(RunOptions(scheduler=name)) as scheduler:
            assert scheduler == name and client_for(scheduler) is None


def test_resolve_pipeline_reads_the_spec_once_and_applies_options(models, tmp_path, monkeypatch):
    import segflow.spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {models['rgb']}\ntiling:\n  blend: hann\n  overlap: 0.5\n")
    reads: list[Path] = []
    real = segflow.spec.load_spec
    monkeypatch.setattr(segflow.spec, "load_spec", lambda p: reads.append(p) or real(p))
    pipeline = resolve_pipeline(spec, None, {"overlap": "32", "device": None})
    assert reads == [spec]
    assert pipeline.model == models["rgb"].resolve()
    assert pipeline.options.blend is BlendMode.HANN and pipeline.options.overlap == 32
    # what a flow gets back from its JSON parameters is the same options
    again = resolve_pipeline(None, pipeline.model, pipeline.options.to_dict())
    assert again.options == pipeline.options
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        resolve_pipeline(None, models["rgb"], {"batchsize": 2})
    with pytest.raises(ConfigError, match="model file"):
        resolve_pipeline(None, tmp_path / "missing.safetensors", None)


# --- which Prefect server -----------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An API that answers /api/health, remembered as `segflow server start` would."""
    httpd = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_port}/api"
    record = server.ServerRecord(url, os.getpid(), httpd.server_port, "server.log", 0.0)
    server._write_record(record)
    monkeypatch.setattr(server, "_is_our_process", lambda pid: pid == os.getpid())
    try:
        yield url
    finally:
        httpd.shutdown()
        server.state_file().unlink(missing_ok=True)


def _no_configured_server(monkeypatch: pytest.MonkeyPatch) -> None:
    # set, then deleted: monkeypatch then also removes what use_prefect_server sets
    monkeypatch.setenv("PREFECT_API_URL", "")
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setattr(runtime, "_prefect_setting", lambda: None)
    monkeypatch.setattr(runtime, "_HINTED", [])


def test_a_configured_api_url_comes_first(fake_server, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://example.invalid:4200/api")
    assert use_prefect_server() == "http://example.invalid:4200/api"


def test_the_remembered_server_is_used_when_it_answers(fake_server, monkeypatch, capsys):
    _no_configured_server(monkeypatch)
    assert use_prefect_server() == fake_server
    assert os.environ["PREFECT_API_URL"] == fake_server  # for this process and its children
    with runtime.prefect_api() as url:  # applied although Prefect read its settings already
        from prefect.settings import PREFECT_API_URL

        assert url == fake_server and PREFECT_API_URL.value() == fake_server
    assert capsys.readouterr().err == ""


def test_a_dead_remembered_server_falls_back_to_a_temporary_one_with_a_hint(
    fake_server, monkeypatch, capsys
):
    _no_configured_server(monkeypatch)
    monkeypatch.setattr(server, "_is_our_process", lambda pid: False)
    monkeypatch.setattr(runtime, "_HINTED", [])
    monkeypatch.setattr(runtime.sys.stderr, "isatty", lambda: True)  # a person at a terminal
    assert use_prefect_server() is None
    assert use_prefect_server() is None
    [hint] = capsys.readouterr().err.splitlines()  # once per process
    assert "segflow server start" in hint
    assert "PREFECT_API_URL" not in os.environ


def test_scripts_get_no_hint_only_their_errors(fake_server, monkeypatch, capsys):
    _no_configured_server(monkeypatch)
    monkeypatch.setattr(server, "_is_our_process", lambda pid: False)
    monkeypatch.setattr(runtime, "_HINTED", [])
    monkeypatch.setattr(runtime.sys.stderr, "isatty", lambda: False)
    assert use_prefect_server() is None
    assert capsys.readouterr().err == ""


def test_stop_forgets_a_server_whose_process_is_gone(monkeypatch):
    record = server.ServerRecord("http://127.0.0.1:9/api", 2**22 + 12345, 9, "log", 0.0)
    server._write_record(record)
    assert server.remembered() == record and server.running() is None
    assert server.stop() == record
    assert server.remembered() is None and server.stop() is None


def test_model_members_and_resolve_run_name_an_ensemble(models, tmp_path):
    from segflow.engine.ensemble import Ensemble

    folder = tmp_path / "folds"
    folder.mkdir()
    for name in ("b.safetensors", "a.safetensors"):
        (folder / name).write_bytes(Path(models["rgb"]).read_bytes())
    (folder / "a.yaml").write_text("not a model")
    assert runtime.model_members(None) == []
    assert runtime.model_members(str(models["rgb"])) == [Path(models["rgb"]).absolute()]
    assert runtime.model_members(folder) == [folder / "a.safetensors", folder / "b.safetensors"]
    with pytest.raises(ConfigError, match="not found"):
        runtime.model_members([models["rgb"], tmp_path / "missing.safetensors"])
    pipeline, ref = runtime.resolve_run(None, [str(models["rgb"]), str(folder)], {"device": "cpu"})
    assert ref == [str(models["rgb"]), str(folder / "a.safetensors"), str(folder / "b.safetensors")]
    assert pipeline.model == Path(models["rgb"]).resolve() and pipeline.options.device == "cpu"
    _, single = runtime.resolve_run(None, models["rgb"], None)
    assert single == str(Path(models["rgb"]).resolve())
    ensemble = runtime.loaded_models(ref, [1.0, 2.0, 1.0])
    assert isinstance(ensemble, Ensemble) and ensemble.member_weights() == (1.0, 2.0, 1.0)
    assert runtime.loaded_models(single) is runtime.loaded_model(single)  # loaded once
    with pytest.raises(ConfigError, match="weights are for ensembles"):
        runtime.loaded_models(single, [1.0])
