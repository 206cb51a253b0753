"""Batch inputs: folders, globs, manifests and lists; output naming; output states."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.inputs import output_state
from segflow.errors import ConfigError
from segflow.inputs import collect_inputs, plan_items, read_manifest
from tests.flows.conftest import write_scene


def test_collect_inputs_from_folder_glob_manifest_and_list(tmp_path):
    a = write_scene(tmp_path / "a.tif", seed=1)
    b = write_scene(tmp_path / "b.tif", seed=2)
    (tmp_path / "notes.txt").write_text("not an input")
    assert [p for _, p in collect_inputs(tmp_path)] == [a, b]
    assert [p for _, p in collect_inputs(str(tmp_path / "*.tif"))] == [a, b]
    (tmp_path / "list.txt").write_text("# scenes\na.tif\n\nb.tif\n")
    assert [p for _, p in collect_inputs(tmp_path / "list.txt")] == [
        tmp_path / "a.tif",
        tmp_path / "b.tif",
    ]
    assert [p for _, p in collect_inputs([str(a), str(b)])] == [a, b]


def test_csv_manifest_with_ids_and_relative_paths(tmp_path):
    sub = tmp_path / "scans"
    sub.mkdir()
    manifest = tmp_path / "batch.csv"
    manifest.write_text("id,path,notes\nP001,scans/x.nii.gz,first\nP002,/abs/y.nii,\n")
    rows = read_manifest(manifest)
    assert rows == [("P001", sub / "x.nii.gz"), ("P002", Path("/abs/y.nii"))]
    items = plan_items(rows, tmp_path / "out")
    assert [i.output for i in items] == [
        str(tmp_path / "out" / "P001.zarr"),
        str(tmp_path / "out" / "P002.zarr"),
    ]
    headerless = tmp_path / "plain.csv"
    headerless.write_text("scans/x.nii.gz\nscans/z.nii.gz\n")
    assert [p.name for _, p in read_manifest(headerless)] == ["x.nii.gz", "z.nii.gz"]


def test_input_mistakes_are_one_line_config_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no inputs in"):
        collect_inputs(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no files match"):
        collect_inputs(str(tmp_path / "*.tif"))
    with pytest.raises(ConfigError, match="both write"):
        plan_items([(None, Path("a/x.tif")), (None, Path("b/x.tif"))], tmp_path / "out")
    single = plan_items([(None, Path("a/x.tif"))], tmp_path / "one.zarr")
    assert single[0].output == str(tmp_path / "one.zarr")


def test_output_states(tmp_path):
    assert output_state(tmp_path / "none.zarr") == "absent"
    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "data.bin").write_bytes(b"x")
    assert output_state(tmp_path / "other.zarr") == "foreign"
