"""RunOptions: every option parsed once, at construction, with one-line errors."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from segflow.errors import ConfigError
from segflow.options import (
    OPTION_NAMES,
    BlendMode,
    ProbabilityMode,
    RunOptions,
    parse_ints,
    parse_list,
    parse_numbers,
    parse_size,
)


def test_strings_lists_and_tuples_become_one_normal_form():
    options = RunOptions(
        patch_size="96,96,64",
        overlap="16",
        blend="Hann",
        bands=[3, 2, 1],
        chunk_size=[64],
        probabilities="FLOAT16",
        scheduler="Threads",
        device="CUDA:1",
    )
    assert options.patch_size == (96, 96, 64)
    assert options.overlap == 16 and isinstance(options.overlap, int)  # pixels
    assert options.blend is BlendMode.HANN
    assert options.bands == (3, 2, 1)
    assert options.chunk_size == 64
    assert options.probabilities is ProbabilityMode.FLOAT16
    assert options.scheduler == "threads" and options.device == "cuda:1"
    assert RunOptions(patch_size="512x512").patch_size == (512, 512)
    assert RunOptions(overlap=0.5).overlap == 0.5


def test_options_are_frozen_and_hashable():
    options = RunOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.overlap = 0.5  # type: ignore[misc]
    assert hash(options) == hash(RunOptions())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"overlap": "abc"}, "overlap is a fraction below 1"),
        ({"overlap": "nan"}, "overlap must be a finite number"),
        ({"overlap": -1}, "overlap must be a finite number of at least 0"),
        ({"overlap": 2.5}, "an overlap of 1 or more is whole pixels"),
        ({"patch_size": "0"}, "patch size must be at least 1"),
        ({"patch_size": "12,a"}, "patch size takes whole numbers"),
        ({"blend": "gausian"}, "did you mean 'gaussian'?"),
        ({"probabilities": "uint9"}, "unknown probabilities 'uint9'"),
        ({"sigma": 0}, "sigma is a fraction of the patch in (0, 1]"),
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"bands": "0,1"}, "bands are numbered from 1"),
        ({"slice_axis": 3}, "slice axis must be 0, 1 or 2"),
        ({"scheduler": "thread"}, "did you mean 'threads'?"),
        ({"device": "tpu"}, "device must be auto, cpu, cuda (gpu), cuda:N or mps"),
        ({"region_size": 0}, "region size must be at least 1"),
        ({"labels": False}, "nothing to write"),
        ({"amp": "maybe"}, "amp is true or false"),
        ({"zarr_format": "4"}, "zarr format must be 2 (GDAL, QGIS) or 3"),
        ({"uncertainty": "perhaps"}, "uncertainty is true or false"),
    ],
)
def test_mistakes_are_one_line_config_errors(changes, message):
    with pytest.raises(ConfigError) as info:
        RunOptions(**changes)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_names_get_a_did_you_mean():
    with pytest.raises(ConfigError, match="unknown option 'patchsize'; did you mean 'patch_size'"):
        RunOptions().replace(patchsize=3)
    with pytest.raises(ConfigError, match=r"spec\.yaml: unknown option 'overlpa'"):
        RunOptions.from_mapping({"overlpa": 0.5}, where="spec.yaml")


def test_replace_keeps_what_is_not_given():
    base = RunOptions(patch_size=256, device="cpu")
    changed = base.replace(patch_size=None, overlap=32)
    assert changed.patch_size == 256 and changed.overlap == 32 and changed.device == "cpu"
    assert base.replace() is base


def test_to_dict_round_trips_and_is_json_friendly():
    import json

    options = RunOptions(patch_size=(96, 96, 64), blend="hann", bands=(1, 2), nodata=0)
    data = json.loads(json.dumps(options.to_dict()))
    assert set(data) == set(OPTION_NAMES)
    assert RunOptions.from_mapping(data) == options


def test_gpu_is_cuda():
    assert RunOptions(device="GPU").device == "cuda"
    assert RunOptions(device="gpu:1").device == "cuda:1"


def test_zarr_format_is_2_or_3_and_not_in_the_fingerprint():
    assert RunOptions().zarr_format == 3
    assert RunOptions(zarr_format="v2").zarr_format == RunOptions(zarr_format=2).zarr_format == 2
    # the store's layout records the format; a resume names the difference itself
    assert RunOptions(zarr_format=2).output_options() == RunOptions().output_options()


def test_output_options_are_the_recorded_ones():
    recorded = RunOptions().output_options()
    assert "scheduler" not in recorded and "region_size" not in recorded
    assert recorded["blend"] == "gaussian" and recorded["probabilities"] == "none"


def test_list_parsers():
    assert parse_list(" a, b ,,c") == ["a", "b", "c"]
    assert parse_ints("4,3,2", "bands") == (4, 3, 2)
    assert parse_ints(7, "bands") == (7,)
    assert parse_numbers("0.5, 1", "mean") == (0.5, 1.0)
    assert parse_size([32, 32], "patch size") == (32, 32)
    with pytest.raises(ConfigError, match="finite"):
        parse_numbers("nan", "mean")


def test_importing_options_imports_nothing_heavy():
    code = (
        "import sys, segflow.options, segflow.spec, segflow.inputs, segflow.cli.run;"
        "heavy = {'torch', 'rasterio', 'zarr', 'nibabel', 'dask', 'prefect'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_uncertainty_is_recorded_only_when_asked():
    assert "uncertainty" not in RunOptions().output_options()  # earlier stores resume as before
    asked = RunOptions(uncertainty="true", labels=False)  # something to write on its own
    assert asked.uncertainty is True and asked.output_options()["uncertainty"] is True
    assert RunOptions.from_mapping(asked.to_dict()) == asked  # as the flows pass it on


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("cuda:0,cuda:1", ("cuda:0", "cuda:1")),
        ("0, 1", ("cuda:0", "cuda:1")),
        (["gpu:1", 3], ("cuda:1", "cuda:3")),
        ("ALL", ("all",)),
        ("cpu,cpu", ("cpu", "cpu")),
    ],
)
def test_devices_name_one_worker_each(given, expected):
    options = RunOptions(devices=given)
    assert options.devices == expected
    # a local cluster of them, whose workers each see their device as plain cuda (or cpu)
    assert options.scheduler == "local"
    assert options.device == ("cpu" if expected[0] == "cpu" else "cuda")
    assert RunOptions.from_mapping(options.to_dict()) == options
    assert "devices" not in options.output_options()  # where it runs changes no bit


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"devices": "mps"}, "devices takes CUDA devices (cuda:0,cuda:1, 0,1 or all) or cpu,cpu"),
        ({"devices": "cuda"}, "devices takes CUDA devices (cuda:0,cuda:1, 0,1 or all) or cpu,cpu"),
        ({"devices": "cuda:0,0"}, "device cuda:0 is named twice in devices"),
        ({"devices": "cpu,cuda:0"}, "(CUDA devices and cpu never mixed), got 'cpu,cuda:0'"),
        ({"devices": "all,cuda:1"}, "devices takes cuda:0,cuda:1 (or 0,1), all, or cpu,cpu"),
        ({"devices": " , "}, "got ' , '"),
        ({"devices": "0,1", "workers": 3}, "workers 3 contradicts devices cuda:0,cuda:1"),
        ({"devices": "0", "scheduler": "sync"}, "scheduler 'sync' contradicts devices cuda:0"),
        ({"devices": "0", "scheduler": "tcp://h:8786"}, "scheduler 'tcp://h:8786' contradicts"),
        ({"devices": "0,1", "device": "cuda:1"}, "device 'cuda:1' contradicts devices"),
        ({"devices": "cpu", "device": "cuda"}, "device 'cuda' contradicts devices cpu"),
        ({"devices": "0", "threads_per_worker": 2}, "one thread per device worker"),
    ],
)
def test_devices_that_cannot_be_run_fail_in_one_line(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunOptions(**changes)


def test_devices_keep_a_device_that_agrees():
    assert RunOptions(devices="0,1", device="cuda", workers=2).device == "cuda"
    assert RunOptions(devices="all", workers=4).workers == 4  # counted when the run starts
