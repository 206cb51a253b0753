from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from segflow.errors import ModelError
from segflow.models import load_model
from segflow.models.legacy import is_torchscript_archive, read_state_dict
from tests.models.tiny import tiny_model


class Payload:
    """Unpickling this calls os.mkdir(marker): a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_payload_is_live(tmp_path: Path) -> None:
    """Control: the payload really runs when unpickled the unsafe way."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["torch.save", "pickle2", "pickle5"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_malicious_pickle_is_refused_and_never_runs(
    tmp_path: Path, writer: str, wrapped: bool
) -> None:
    marker = tmp_path / "pwned"
    evil: object = Payload(marker)
    if wrapped:  # hidden among real weights
        evil = {"conv.weight": torch.zeros(2, 2), "conv.bias": evil}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(evil, fh, protocol=int(writer[-1]))
    (tmp_path / "evil.yaml").write_text(
        yaml.safe_dump(tiny_model("unet2d")[1].model_dump(mode="json"))
    )
    with pytest.raises(ModelError, match=r"refusing to load evil\.pt") as info:
        load_model(path)
    if writer != "pickle5" and not wrapped:  # protocol 5 is stopped at its first opcode
        assert "posix.mkdir" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="refusing"):
        read_state_dict(path)
    assert not marker.exists()


def test_wrapped_and_prefixed_state_dicts(tmp_path: Path) -> None:
    weights = {"a.weight": torch.ones(2), "b.bias": torch.zeros(1)}
    for i, obj in enumerate(
        [
            weights,
            {"state_dict": weights, "epoch": 4, "lr": 0.1},
            {"model": {f"module.{k}": v for k, v in weights.items()}},
            {f"_orig_mod.{k}": v for k, v in weights.items()},
        ]
    ):
        path = tmp_path / f"w{i}.pt"
        torch.save(obj, path)
        got = read_state_dict(path)
        assert set(got) == set(weights), i
        assert torch.equal(got["a.weight"], weights["a.weight"])


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ModelError, match="not a state dict"):
        read_state_dict(path)
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ModelError, match="keys epoch"):
        read_state_dict(path)


def test_truncated_pt(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated") as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archives_are_told_apart(tmp_path: Path) -> None:
    saved = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(1)}, saved)
    scripted = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    assert is_torchscript_archive(scripted)
    assert not is_torchscript_archive(saved)
