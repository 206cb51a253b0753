"""Devices of a multi-device run: counted without torch where possible, checked, pinned."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from segflow.engine.devices import (
    nvidia_smi_count,
    visible_cuda_devices,
    visible_entries,
    worker_devices,
    worker_environment,
)
from segflow.errors import ConfigError

# what ``nvidia-smi -L`` prints on a machine with two GPUs, the second split in MIG slices
LISTING = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5f1c0b1e-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5f1c0b1e-0000-0000-0000-000000000001)
  MIG 3g.40gb     Device  0: (UUID: MIG-1a2b3c4d-0000-0000-0000-000000000000)
"""


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Puts an ``nvidia-smi`` printing ``listing`` (exiting with ``code``) first on PATH.

    This machine has no NVIDIA driver; the listing is the tool's documented format.
    """

    def install(listing: str | None, code: int = 0) -> None:
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        program = folder / "nvidia-smi"
        text = "" if listing is None else listing
        program.write_text(
            f"#!{sys.executable}\nimport sys\nsys.stdout.write({text!r})\nsys.exit({code})\n"
        )
        program.chmod(program.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")

    return install


def test_gpus_are_counted_from_nvidia_smi_without_torch(smi, monkeypatch):
    smi(LISTING)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch would fail
    assert nvidia_smi_count() == 2
    assert visible_cuda_devices() == ["0", "1"]
    assert worker_devices(["all"]) == ["cuda:0", "cuda:1"]


def test_cuda_visible_devices_narrows_and_renumbers(smi, monkeypatch):
    smi(LISTING)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_cuda_devices() == ["1"]
    assert worker_devices(["cuda:0"]) == ["cuda:0"]
    with pytest.raises(ConfigError, match=r"device cuda:1 does not exist: 1 CUDA GPU\(s\)"):
        worker_devices(["cuda:0", "cuda:1"])


def test_a_failing_nvidia_smi_is_no_count(smi):
    smi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9)
    assert nvidia_smi_count() is None


@pytest.mark.parametrize(
    ("listed", "physical", "expected"),
    [
        ("0,1", 2, ["0", "1"]),
        ("1, 0", 2, ["1", "0"]),
        ("", 2, []),
        ("0,5,1", 2, ["0"]),  # CUDA stops at the first entry that names no device
        ("-1,0", 2, []),
        ("0,0", 2, ["0"]),
        ("GPU-5f1c,1", None, ["GPU-5f1c", "1"]),
        ("3", None, ["3"]),
    ],
)
def test_visible_entries_follow_cuda(listed, physical, expected):
    assert visible_entries(listed, physical) == expected


def test_no_gpu_visible_is_one_line_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match=r"device cuda:0 does not exist: 0 CUDA GPU.*none"):
        worker_devices(["cuda:0"])
    with pytest.raises(ConfigError, match="devices 'all' found no CUDA GPU"):
        worker_devices(["all"])


def test_workers_must_match_the_devices_all_expands_to(smi, monkeypatch):
    smi(LISTING)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ConfigError, match="workers 3 contradicts devices"):
        worker_devices(["all"], workers=3)
    assert worker_devices(["all"], workers=2) == ["cuda:0", "cuda:1"]


def test_cpu_workers_need_no_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert worker_devices(["cpu", "cpu"]) == ["cpu", "cpu"]


def test_each_worker_sees_only_its_own_device():
    visible = ["2", "GPU-5f1c"]
    assert worker_environment("cuda:0", visible)["CUDA_VISIBLE_DEVICES"] == "2"
    assert worker_environment("cuda:1", visible) == {
        "CUDA_VISIBLE_DEVICES": "GPU-5f1c",
        "SEGFLOW_WORKER_DEVICE": "cuda:1",
    }
    assert worker_environment("cpu", visible)["CUDA_VISIBLE_DEVICES"] == ""
