"""Land-cover mapping flow: idempotent re-runs, crash recovery, class areas, reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from flows import runtime as flows_runtime
from flows.landcover import landcover_mapping
from flows.report import outcome

from .conftest import write_scene

OPTIONS = {"device": "cpu", "chunk_size": 64}
PIXEL_M2 = 30.0 * 30.0  # write_tif's default grid


def file_times(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
    }


def expected_counts(scene: Path) -> np.ndarray:
    with rasterio.open(scene) as src:
        return np.bincount(src.read().argmax(0).ravel(), minlength=3)


def crash(store: Path, chunks: list[str]) -> None:
    """What a killed run leaves: some chunks never recorded (nor written), store not finalized."""
    for key in chunks:
        (store / "_segflow" / "done" / "c" / key).unlink()
        (store / "labels" / "c" / key).unlink(missing_ok=True)
    group = zarr.open_group(store, mode="r+")
    info = dict(group.attrs["segflow"])
    info["complete"] = False
    info.pop("summary", None)
    group.attrs["segflow"] = info


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(3):
        write_scene(folder / f"scene{i}.tif", seed=10 + i)
    return folder


def run(scenes: Path, out: Path, model: Path, **kw):
    state = landcover_mapping(
        str(scenes), str(out), model=str(model), options=OPTIONS, return_state=True, **kw
    )
    return state, outcome(state)


def test_maps_new_scenes_and_reports_class_areas(prefect_server, models, scenes, tmp_path):
    out = tmp_path / "maps"
    state, summary = run(scenes, out, models["rgb"])
    assert state.is_completed()
    assert summary.counts == {"complete": 3, "skipped": 0, "failed": 0}
    for scene in summary.scenes:
        counts = expected_counts(scenes / f"{scene.scene}.tif")
        assert scene.area_method == "planar"
        assert [scene.classes[f"class{k}"]["pixels"] for k in range(3)] == counts.tolist()
        for k in range(3):
            assert scene.classes[f"class{k}"]["ha"] == pytest.approx(counts[k] * PIXEL_M2 / 1e4)
            assert scene.classes[f"class{k}"]["km2"] == pytest.approx(counts[k] * PIXEL_M2 / 1e6)
    total = sum(expected_counts(p) for p in sorted(scenes.glob("*.tif")))
    assert summary.totals["class1"]["pixels"] == total[1]
    report = json.loads(Path(summary.report_json).read_text())
    assert [s["status"] for s in report["scenes"]] == ["complete"] * 3
    csv_text = Path(summary.report_csv).read_text().splitlines()
    assert csv_text[0].startswith("scene,status,reason,seconds") and "class0_ha" in csv_text[0]
    assert len(csv_text) == 4
    # the artifacts are on the flow run
    from prefect import get_client

    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["landcover-summary", "landcover-summary-table"])
            )
        )
    assert {a.type for a in found if a.flow_run_id == state.state_details.flow_run_id} == {
        "markdown",
        "table",
    }


def test_rerun_after_completion_does_no_model_work(prefect_server, models, scenes, tmp_path):
    out = tmp_path / "maps"
    run(scenes, out, models["rgb"])
    before = file_times(out / "scene0.zarr") | file_times(out / "scene2.zarr")
    flows_runtime._MODELS.clear()  # a model load would show up here
    state, summary = run(scenes, out, models["rgb"])
    assert state.is_completed()
    assert summary.counts == {"complete": 0, "skipped": 3, "failed": 0}
    assert flows_runtime._MODELS == {}
    assert file_times(out / "scene0.zarr") | file_times(out / "scene2.zarr") == before
    # areas still reported for scenes mapped by an earlier run
    assert all(s.classes["class0"]["pixels"] > 0 for s in summary.scenes)


def test_after_a_crash_only_unfinished_scenes_and_chunks_are_computed(
    prefect_server, models, scenes, tmp_path
):
    out = tmp_path / "maps"
    reference = tmp_path / "reference"
    run(scenes, reference, models["rgb"])
    run(scenes, out, models["rgb"])
    crashed = out / "scene1.zarr"
    crash(crashed, ["0/0", "1/2"])
    (out / "scene2.zarr").rename(tmp_path / "gone.zarr")  # scene2 never started
    write_scene(scenes / "scene3.tif", seed=99)  # arrived since
    untouched_scene = file_times(out / "scene0.zarr")
    done_chunk = crashed / "labels" / "c" / "2" / "1"
    done_time = done_chunk.stat().st_mtime_ns

    state, summary = run(scenes, out, models["rgb"])
    assert state.is_completed()
    by_name = {s.scene: s for s in summary.scenes}
    assert by_name["scene0"].status == "skipped"
    assert by_name["scene1"].status == "complete" and by_name["scene1"].resumed
    assert by_name["scene2"].status == "complete" and not by_name["scene2"].resumed
    assert by_name["scene3"].status == "complete"
    assert file_times(out / "scene0.zarr") == untouched_scene
    assert done_chunk.stat().st_mtime_ns == done_time  # a finished chunk is not rewritten
    assert (crashed / "labels" / "c" / "0" / "0").is_file()  # the missing ones are
    for name in ("scene1", "scene2"):
        np.testing.assert_array_equal(
            zarr.open_group(out / f"{name}.zarr", mode="r")["labels"][...],
            zarr.open_group(reference / f"{name}.zarr", mode="r")["labels"][...],
        )
    # the resumed scene's areas cover the whole scene, not only the chunks of this run
    counts = expected_counts(scenes / "scene1.tif")
    assert [by_name["scene1"].classes[f"class{k}"]["pixels"] for k in range(3)] == counts.tolist()


def test_failed_scene_fails_the_run_but_not_the_others(prefect_server, models, scenes, tmp_path):
    (scenes / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    state, summary = run(scenes, tmp_path / "maps", models["rgb"])
    assert state.is_failed() and "1 of 4 scenes failed" in state.message
    by_name = {s.scene: s for s in summary.scenes}
    assert by_name["corrupt"].status == "failed" and "corrupt.tif" in by_name["corrupt"].reason
    assert sum(s.status == "complete" for s in summary.scenes) == 3


def test_empty_folder_is_a_quiet_run(prefect_server, models, tmp_path):
    (tmp_path / "none").mkdir()
    state, summary = run(tmp_path / "none", tmp_path / "maps", models["rgb"])
    assert state.is_completed() and summary.scenes == []


def test_a_night_from_an_ensemble_spec_is_the_library_ensemble(prefect_server, scenes, tmp_path):
    """What `segflow serve --spec` runs each night when the spec's model: names folds."""
    from segflow import segment
    from tests.conftest import pixel_model, save

    folds = tmp_path / "folds"
    folds.mkdir()
    eye = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    for k in range(3):
        save(pixel_model(eye, [0.3 * k, 0.0, -0.2 * k]), folds / f"fold{k}.safetensors")
    spec = tmp_path / "night.yaml"
    spec.write_text("model: folds\nweights: [1, 2, 3]\n")
    out = tmp_path / "maps"
    state = landcover_mapping(
        str(scenes), str(out), spec=str(spec), options=OPTIONS, return_state=True
    )
    summary = outcome(state)
    assert state.is_completed() and summary.counts["complete"] == 3
    members = sorted(folds.iterdir())
    reference = segment(scenes / "scene0.tif", members, tmp_path / "lib.zarr", weights=[1, 2, 3],
                        device="cpu", chunk_size=64)  # fmt: skip
    assert not isinstance(reference, list) and reference.status == "complete"
    night = zarr.open_group(out / "scene0.zarr", mode="r")
    np.testing.assert_array_equal(
        night["labels"][...], zarr.open_group(tmp_path / "lib.zarr", mode="r")["labels"][...]
    )
    recorded = night.attrs["segflow"]["provenance"]["ensemble"]
    assert recorded["weights"] == [1.0, 2.0, 3.0] and len(recorded["members"]) == 3


def test_an_ensemble_names_its_stac_stores_by_members_and_weights(models, tmp_path):
    from flows.landcover import model_tag
    from segflow.io.files import sha256_file

    rgb, other = str(models["rgb"]), str(models["bands4"])
    assert model_tag(rgb) == sha256_file(models["rgb"])[:12]
    tags = {model_tag(rgb), model_tag([rgb, other]), model_tag([other, rgb]),
            model_tag([rgb, other], [1.0, 2.0])}  # fmt: skip
    assert len(tags) == 4 and all(len(t) == 12 for t in tags)
