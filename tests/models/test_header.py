"""A model file's metadata read without torch, as the command does before its imports."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from segflow.errors import ModelError
from segflow.models.header import META_KEY, safetensors_meta
from tests.conftest import save, threshold_model


def _raw(path: Path, header: object, tail: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + tail)
    return path


def test_the_checks_before_torch_import_no_torch_nor_dask() -> None:
    code = (
        "import sys, segflow.cli.run, segflow.models.header, segflow.models.compat, "
        "segflow.io.open\n"
        "print(sorted(m for m in ('torch', 'dask', 'zarr', 'nibabel') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr


def test_the_metadata_of_a_saved_model_reads_back(tmp_path: Path) -> None:
    model = threshold_model(100.0, spatial_dims=2)
    meta = safetensors_meta(save(model, tmp_path / "m.safetensors"))
    assert meta == model.meta


@pytest.mark.parametrize(
    ("header", "tail", "message"),
    [
        ([1, 2], b"", "not a mapping"),
        ({"w": {"dtype": "F32", "shape": [4]}}, b"", "bad tensor offsets"),
        (
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
            b"\0" * 8,
            "truncated model file",
        ),
        ({"__metadata__": {"format": "pt"}}, b"", "without segflow metadata"),
        ({"__metadata__": {META_KEY: '{"arch": "pixel"}'}}, b"", "invalid model metadata"),
    ],
    ids=["list", "no-offsets", "truncated", "no-meta", "bad-meta"],
)
def test_a_bad_header_is_one_model_error(tmp_path: Path, header, tail, message) -> None:
    path = _raw(tmp_path / "bad.safetensors", header, tail)
    with pytest.raises(ModelError) as info:
        safetensors_meta(path)
    text = str(info.value)
    assert "\n" not in text and "bad.safetensors" in text and message in text
