"""The segment / segment_batch flows and run_flow: real flow runs on a Prefect test server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from prefect.states import Completed, Failed

from flows import runtime as flows_runtime
from flows import segment as flows_segment
from flows.report import outcome
from flows.segment import (
    InputItem,
    InputResult,
    exit_code,
    is_transient_failure,
    output_state,
    run_flow,
    segment,
    segment_batch,
    segment_input,
)
from segflow.errors import ConfigError, OutputError, ReaderError, RegionError, SegflowError
from segflow.options import RunOptions

from .conftest import write_scene

CPU = {"device": "cpu"}  # flow parameters: option names, as RunOptions.to_dict() gives them
ON_CPU = RunOptions(device="cpu")  # run_flow takes the parsed options


def labels(store: Path) -> np.ndarray:
    return zarr.open_group(store, mode="r")["labels"][...]


def test_exit_codes():
    def r(status: str) -> InputResult:
        return InputResult(name="x", input="x", output="x", status=status)  # type: ignore[arg-type]

    assert exit_code([r("complete"), r("skipped")]) == 0
    assert exit_code([r("complete"), r("failed")]) == 3
    assert exit_code([r("failed"), r("failed")]) == 1


def test_only_transient_os_errors_are_retried():
    def state_of(exc: BaseException):
        return Failed(data=exc)

    assert is_transient_failure(None, None, state_of(OSError("NFS: stale file handle")))
    assert is_transient_failure(None, None, state_of(TimeoutError("read timed out")))
    assert not is_transient_failure(
        None, None, state_of(ReaderError("truncated file"))
    )  # an OSError too
    assert not is_transient_failure(None, None, state_of(OutputError("exists")))
    # a region that failed: on a hiccup it is tried again, on a full disk it is not
    assert is_transient_failure(None, None, state_of(RegionError("stale", retryable=True)))
    assert not is_transient_failure(None, None, state_of(RegionError("no space")))
    assert not is_transient_failure(None, None, state_of(ValueError("bug")))
    assert not is_transient_failure(None, None, Completed(data=1))
    assert segment_input.retries == flows_segment.TRANSIENT_RETRIES > 0
    assert segment_input.retry_condition_fn is is_transient_failure


# --- real flow runs ----------------------------------------------------------------------------


def test_batch_flow_isolates_a_corrupt_input(prefect_server, models, tmp_path):
    inputs = [write_scene(tmp_path / f"s{i}.tif", seed=i) for i in range(3)]
    bad = tmp_path / "broken.tif"
    bad.write_bytes(inputs[0].read_bytes()[:300])  # truncated copy
    report_path = tmp_path / "report.json"
    state = segment_batch(
        [str(p) for p in [*inputs, bad]],
        str(tmp_path / "out"),
        model=str(models["rgb"]),
        options={**CPU, "chunk_size": 64},
        report_path=str(report_path),
        return_state=True,
    )
    assert state.is_failed() and "1 of 4 inputs failed" in state.message
    batch = outcome(state)
    status = {r.name: r for r in batch.items}
    assert [status[f"s{i}"].status for i in range(3)] == ["complete"] * 3
    assert status["broken"].status == "failed"
    assert "broken.tif" in status["broken"].reason and status["broken"].error_type == "ReaderError"
    assert exit_code(batch.items) == 3
    for i, path in enumerate(inputs):
        image = np.asarray(__import__("rasterio").open(path).read())
        np.testing.assert_array_equal(labels(tmp_path / "out" / f"s{i}.zarr"), image.argmax(0))
    # progress and failures went through Prefect's loggers: they are on the server (the UI)
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    messages = [log.message for log in logs]
    assert any("s0: 100 % done" in m for m in messages)
    assert any("broken failed:" in m for m in messages)
    written = json.loads(report_path.read_text())
    assert [r["status"] for r in written["items"]] == ["complete"] * 3 + ["failed"]
    assert "broken" in report_path.with_suffix(".csv").read_text()


def test_run_flow_single_input_and_errors(prefect_server, models, tmp_path):
    scene = write_scene(tmp_path / "one.tif")
    seen: list[tuple[int, int]] = []
    [result] = run_flow(
        [scene],
        models["rgb"],
        tmp_path / "one.zarr",
        ON_CPU,
        progress=lambda label: lambda done, total: seen.append((done, total)),
    )
    assert result.status == "complete" and result.output == tmp_path / "one.zarr"
    assert result.stats["valid_pixels"] == 192 * 160
    assert seen and seen[-1][0] == seen[-1][1]  # the command line's progress bar was fed
    # an existing output: the engine's own one-line error, re-raised for a single input
    with pytest.raises(OutputError, match="exists"):
        run_flow([scene], models["rgb"], tmp_path / "one.zarr", ON_CPU, raise_errors=True)
    [failed] = run_flow([scene], models["rgb"], tmp_path / "one.zarr", ON_CPU)
    assert failed.status == "failed" and "--resume" in failed.error
    # resume of a complete store: nothing to do, the store's summary is kept
    [again] = run_flow([scene], models["rgb"], tmp_path / "one.zarr", ON_CPU, resume=True)
    assert again.status == "complete" and again.stats["valid_pixels"] == 192 * 160
    # configuration mistakes fail before a flow run starts
    with pytest.raises(ConfigError, match="model file"):
        run_flow([scene], tmp_path / "missing.safetensors", tmp_path / "x.zarr", ON_CPU)
    with pytest.raises(SegflowError):
        run_flow(
            [tmp_path / "absent.tif"], models["rgb"], tmp_path / "y.zarr", ON_CPU, raise_errors=True
        )
    # a flow's options parameter is parsed once, at its start: a typo fails the run there
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        segment(str(scene), str(tmp_path / "x.zarr"), model=str(models["rgb"]),
                options={"batchsize": 2})  # fmt: skip


def test_batch_resume_continues_partial_and_skips_complete(prefect_server, models, tmp_path):
    scenes = [write_scene(tmp_path / f"r{i}.tif", seed=i) for i in range(2)]
    out = tmp_path / "out"
    run_flow(scenes, models["rgb"], out, ON_CPU.replace(chunk_size=64))
    reference = labels(out / "r1.zarr")
    # simulate a crash of r1: two chunks unrecorded and their data gone, not finalized
    store = out / "r1.zarr"
    for key in ("0/0", "2/1"):
        (store / "_segflow" / "done" / "c" / key).unlink()
        (store / "labels" / "c" / key).unlink()
    group = zarr.open_group(store, mode="r+")
    info = dict(group.attrs["segflow"])
    info["complete"] = False
    group.attrs["segflow"] = info
    assert output_state(store) == "partial" and output_state(out / "r0.zarr") == "complete"
    kept = (store / "labels" / "c" / "1" / "1").stat().st_mtime_ns
    before_r0 = (out / "r0.zarr" / "labels" / "c" / "0" / "0").stat().st_mtime_ns
    results = run_flow(scenes, models["rgb"], out, ON_CPU.replace(chunk_size=64), resume=True)
    assert [r.status for r in results] == ["complete", "complete"]
    np.testing.assert_array_equal(labels(store), reference)
    assert (store / "labels" / "c" / "1" / "1").stat().st_mtime_ns == kept  # done chunk untouched
    assert (out / "r0.zarr" / "labels" / "c" / "0" / "0").stat().st_mtime_ns == before_r0
    assert output_state(store) == "complete"


@pytest.mark.slow
def test_threads_and_a_two_worker_cluster_give_identical_outputs(prefect_server, models, tmp_path):
    """An existing cluster by address (2 worker processes on loopback), as in production."""
    from distributed import Client, LocalCluster

    scenes = [write_scene(tmp_path / f"c{i}.tif", size=(200, 180), seed=i) for i in range(2)]
    common = {**CPU, "chunk_size": 64, "patch_size": 64, "overlap": 16}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        for name, extra in (("threads", {"scheduler": "threads"}),
                            ("cluster", {"scheduler": cluster.scheduler_address})):  # fmt: skip
            state = segment_batch(
                [str(s) for s in scenes], str(tmp_path / name), model=str(models["unet"]),
                options={**common, **extra}, return_state=True,
            )  # fmt: skip
            assert state.is_completed(), state.message

        def cached_models() -> int:
            from segflow.models import predictor

            return len(predictor._CACHE)

        # the model was loaded once per worker process, not once per task
        per_worker = client.run(cached_models)
        assert len(per_worker) == 2 and all(n <= 1 for n in per_worker.values())
        assert sum(per_worker.values()) >= 1
    for i in range(2):
        a = labels(tmp_path / "threads" / f"c{i}.zarr")
        b = labels(tmp_path / "cluster" / f"c{i}.zarr")
        assert a.shape == (200, 180) and len(np.unique(a)) > 1
        np.testing.assert_array_equal(a, b)
    assert flows_runtime._CLIENTS == {}


@pytest.mark.slow
def test_local_cluster_started_for_the_run(prefect_server, models, tmp_path):
    scene = write_scene(tmp_path / "l.tif")
    options = RunOptions(device="cpu", chunk_size=64, scheduler="local", workers=1)
    [result] = run_flow([scene], models["rgb"], tmp_path / "l.zarr", options)
    assert result.status == "complete"
    image = np.asarray(__import__("rasterio").open(scene).read())
    np.testing.assert_array_equal(labels(tmp_path / "l.zarr"), image.argmax(0))


def test_distributed_client_passed_to_run_flow(prefect_server, models, tmp_path):
    from distributed import Client, LocalCluster

    scene = write_scene(tmp_path / "d.tif")
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                     dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        [result] = run_flow([scene], models["rgb"], tmp_path / "d.zarr", ON_CPU, client=client)
        assert result.status == "complete"
        assert client.status != "closed"  # the caller's client is not closed by the flow
    assert flows_runtime._CLIENTS == {}


def test_segment_input_task_skips_a_complete_store_without_loading_the_model(
    prefect_server, models, tmp_path
):
    from prefect import flow

    scene = write_scene(tmp_path / "k.tif")
    item = InputItem(name="k", input=str(scene), output=str(tmp_path / "k.zarr"))
    run_flow([scene], models["rgb"], tmp_path / "k.zarr", ON_CPU)
    flows_runtime._MODELS.clear()

    @flow
    def once() -> InputResult:
        return segment_input(item, str(models["rgb"]), RunOptions(), skip_complete=True)

    result = once()
    assert result.status == "skipped" and result.stats["valid_pixels"] == 192 * 160
    assert flows_runtime._MODELS == {}


def test_run_flow_with_a_manifest_names_outputs_by_id(prefect_server, models, tmp_path):
    for i in range(2):
        write_scene(tmp_path / f"raw_{i}.tif", seed=i)
    manifest = tmp_path / "list.csv"
    manifest.write_text("id,path\nnorth,raw_0.tif\nsouth,raw_1.tif\n")
    results = run_flow([manifest], models["rgb"], tmp_path / "out", ON_CPU)
    assert [r.output.name for r in results] == ["north.zarr", "south.zarr"]
    assert all(r.status == "complete" and r.output.is_dir() for r in results)


def _flow_run(run_url: str):
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(run_url.rstrip("/").rsplit("/", 1)[-1])
            artifacts = await client.read_artifacts()
            return run, [a.key for a in artifacts]

    return asyncio.run(read())


def test_a_run_is_named_tagged_reported_and_linked(prefect_server, models, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    scene = write_scene(tmp_path / "north.tif")
    [result] = run_flow([scene], models["rgb"], tmp_path / "north.zarr", ON_CPU)
    assert result.status == "complete" and result.run_url is not None
    run, artifact_keys = _flow_run(result.run_url)
    assert run.name == "segment-north"
    assert "segflow" in run.tags and f"model:{Path(models['rgb']).stem}" in run.tags
    assert "segment-north" in artifact_keys


def test_a_failed_batch_ends_failed_with_an_exception_carrying_its_report(
    prefect_server, models, tmp_path
):
    from flows.report import RunFailed

    good = write_scene(tmp_path / "good.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    state = segment_batch(
        [str(good), str(bad)],
        str(tmp_path / "out"),
        model=str(models["rgb"]),
        options=CPU,
        return_state=True,
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, RunFailed) and "1 of 2 inputs failed" in str(error)
    with pytest.raises(RunFailed):  # what a deployment's worker does with the final state
        state.result()
    assert [r.status for r in outcome(state).items] == ["complete", "failed"]


# -- ensembles through the flows --------------------------------------------------------------


@pytest.fixture
def fold_models(tmp_path: Path) -> list[Path]:
    """Three pointwise 3-band, 3-class models in a folder, disagreeing enough to matter."""
    from tests.conftest import pixel_model, save

    folder = tmp_path / "folds"
    folder.mkdir()
    weights = [
        [[1.0, 0.0, 0.2], [0.0, 1.0, -0.3], [0.1, 0.1, 1.0]],
        [[0.5, 0.5, 0.0], [0.0, 1.5, 0.0], [-0.2, 0.0, 1.2]],
        [[1.2, -0.1, 0.0], [0.3, 0.7, 0.0], [0.0, 0.4, 0.6]],
    ]
    return [
        save(pixel_model(w, [0.0, 0.1 * k, -0.1 * k]), folder / f"fold{k}.safetensors")
        for k, w in enumerate(weights)
    ]


def _arrays(store: Path) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(store, mode="r")
    return group["labels"][...], group["probabilities"][...]


def test_an_ensemble_flow_run_equals_the_library_run(
    prefect_server, fold_models, tmp_path, monkeypatch
):
    """Repeated models (with weights) and a folder of them, through `segment` and
    `segment_batch` flow runs: the same bytes as segflow.segment, members in provenance,
    the run tagged with each member."""
    from segflow import segment as library_segment

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    scenes = [write_scene(tmp_path / f"s{i}.tif", seed=i) for i in range(2)]
    options = ON_CPU.replace(probabilities="float16", patch_size=64)
    weights = [1.0, 2.0, 0.5]
    [single] = run_flow([scenes[0]], fold_models, tmp_path / "one.zarr", options, weights=weights)
    assert single.status == "complete", single.error
    library = library_segment(
        scenes[0], fold_models, tmp_path / "lib.zarr", options, weights=weights
    )
    assert library.status == "complete"
    for flow_array, library_array in zip(
        _arrays(tmp_path / "one.zarr"), _arrays(tmp_path / "lib.zarr"), strict=True
    ):
        np.testing.assert_array_equal(flow_array, library_array)
    provenance = zarr.open_group(tmp_path / "one.zarr", mode="r").attrs["segflow"]["provenance"]
    members = provenance["ensemble"]["members"]
    assert [m["path"] for m in members] == [str(f) for f in fold_models]
    assert provenance["ensemble"]["weights"] == weights
    run, _ = _flow_run(single.run_url)
    assert "ensemble" in run.tags
    assert {f"model:{f.stem}" for f in fold_models} <= set(run.tags)
    # two inputs and the folder: a segment_batch flow run, equal weights
    batch = run_flow(scenes, fold_models[0].parent, tmp_path / "out", options)
    assert [r.status for r in batch] == ["complete", "complete"]
    for i, scene in enumerate(scenes):
        library_segment(scene, fold_models, tmp_path / f"lib{i}.zarr", options)
        np.testing.assert_array_equal(
            _arrays(tmp_path / "out" / f"s{i}.zarr")[1], _arrays(tmp_path / f"lib{i}.zarr")[1]
        )


def test_ensemble_mistakes_fail_before_a_flow_run(prefect_server, models, fold_models, tmp_path):
    from segflow.errors import ModelError

    scene = write_scene(tmp_path / "s.tif")
    out = tmp_path / "x.zarr"
    # the 4-band model disagrees with the 3-band folds
    with pytest.raises(ModelError, match="ensemble models disagree on input channels"):
        run_flow([scene], [*fold_models, models["bands4"]], out, ON_CPU)
    with pytest.raises(ConfigError, match="2 weights for 3 ensemble models"):
        run_flow([scene], fold_models, out, ON_CPU, weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="weights are for ensembles"):
        run_flow([scene], fold_models[0], out, ON_CPU, weights=[1.0])
    with pytest.raises(ConfigError, match="not found"):
        run_flow([scene], [fold_models[0], tmp_path / "missing.safetensors"], out, ON_CPU)
    assert not out.exists()
    # a flow started with member files directly: the same check, inside the run
    state = segment(
        str(scene),
        str(out),
        model=[str(f) for f in fold_models[:2]] + [str(models["bands4"])],
        options=CPU,
        return_state=True,
    )
    assert state.is_failed() and "disagree on input channels" in state.message
    assert not out.exists()


def test_the_command_runs_an_ensemble_as_a_flow_run(
    prefect_server, fold_models, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from segflow.cli.main import app

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    scene = write_scene(tmp_path / "s.tif")
    args = ["run", str(scene), "-o", str(tmp_path / "cli.zarr"), "--device", "cpu"]
    models_args = [a for f in fold_models for a in ("-m", str(f))]
    result = CliRunner().invoke(app, [*args, *models_args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "flow run: http" in result.output  # recorded as a flow run, not the library path
    provenance = zarr.open_group(tmp_path / "cli.zarr", mode="r").attrs["segflow"]["provenance"]
    assert len(provenance["ensemble"]["members"]) == 3
