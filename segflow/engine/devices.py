"""The devices of a multi-device run: checked, ``all`` expanded, each worker's environment.

Each device gets a worker process of its own (see ``cluster.device_cluster``), pinned
to it by CUDA_VISIBLE_DEVICES: inside the worker its device is ``cuda:0``, so a
task's plain ``cuda`` is that device and no other GPU can be touched. Devices are
counted from CUDA_VISIBLE_DEVICES and ``nvidia-smi -L`` before torch is imported;
torch counts only where nvidia-smi cannot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence

from segflow.errors import ConfigError
from segflow.options import ALL_DEVICES

# the device a worker was given, as the run named it (cuda:1, cpu): for logs and checks
WORKER_DEVICE = "SEGFLOW_WORKER_DEVICE"
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+$")


def worker_devices(devices: Sequence[str], workers: int | None = None) -> list[str]:
    """One device per worker: ``all`` expanded, each CUDA device checked to exist here."""
    if list(devices) == ["cpu"] * len(devices):
        return list(devices)
    visible = len(visible_cuda_devices())
    if list(devices) == [ALL_DEVICES]:
        if not visible:
            raise ConfigError(
                "devices 'all' found no CUDA GPU here (nvidia-smi, CUDA_VISIBLE_DEVICES); "
                "run where GPUs are, or drop devices"
            )
        devices = [f"cuda:{i}" for i in range(visible)]
    for device in devices:
        index = int(device.partition(":")[2])
        if index >= visible:
            seen = f"cuda:0 to cuda:{visible - 1}" if visible else "none"
            raise ConfigError(
                f"device {device} does not exist: {visible} CUDA GPU(s) visible here ({seen}); "
                "check nvidia-smi -L and CUDA_VISIBLE_DEVICES"
            )
    if workers is not None and workers != len(devices):
        raise ConfigError(
            f"workers {workers} contradicts devices ({len(devices)} devices, one worker "
            "each); drop workers"
        )
    return list(devices)


def worker_environment(device: str, visible: Sequence[str]) -> dict[str, str]:
    """The variables that pin a worker process to ``device`` (cpu: no GPU at all).

    ``visible`` are this process's CUDA devices as CUDA_VISIBLE_DEVICES entries, so
    ``cuda:1`` under CUDA_VISIBLE_DEVICES=2,3 is the physical GPU 3.
    """
    pinned = "" if device == "cpu" else visible[int(device.partition(":")[2])]
    return {"CUDA_VISIBLE_DEVICES": pinned, WORKER_DEVICE: device}


def visible_cuda_devices() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries.

    CUDA reads that variable up to its first entry that names no device.
    """
    physical = nvidia_smi_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        count = physical if physical is not None else _torch_count()
        return [str(i) for i in range(count)]
    entries = visible_entries(listed, physical)
    if physical is None and entries:
        entries = entries[: _torch_count()]
    return entries


def visible_entries(listed: str, physical: int | None) -> list[str]:
    """The leading entries of a CUDA_VISIBLE_DEVICES value that name a device."""
    entries: list[str] = []
    for entry in (e.strip() for e in listed.split(",")):
        named = entry.isdigit() and (physical is None or int(entry) < physical)
        if not (named or _UUID.match(entry)) or entry in entries:
            break
        entries.append(entry)
    return entries


def nvidia_smi_count() -> int | None:
    """GPUs ``nvidia-smi -L`` lists (all of them, whatever CUDA_VISIBLE_DEVICES says), or
    None where it is missing or fails (no driver)."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return None
    try:
        listed = subprocess.run(
            [program, "-L"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


def _torch_count() -> int:
    import torch

    return int(torch.cuda.device_count())
