"""models.members: the model files an ensemble names, found without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from segflow.errors import ConfigError
from segflow.models.members import member_files, model_files


def test_folders_expand_by_name_and_skip_sidecars_and_hidden_files(tmp_path):
    folds = tmp_path / "folds"
    folds.mkdir()
    for name in ("fold2.safetensors", "fold1.ONNX", "fold1.onnx.yaml", ".fold0.pt", "notes.txt"):
        (folds / name).write_bytes(b"x")
    single = tmp_path / "extra.pt"
    single.write_bytes(b"x")
    assert model_files(folds) == [folds / "fold1.ONNX", folds / "fold2.safetensors"]
    assert member_files([folds, single]) == [*model_files(folds), single]


def test_a_missing_path_and_an_empty_folder_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"model file .*gone\.pt not found"):
        member_files([tmp_path / "gone.pt"])
    with pytest.raises(ConfigError, match="holds no model files"):
        member_files([tmp_path])


def test_listing_members_imports_no_torch():
    code = "import sys, segflow.models.members; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
