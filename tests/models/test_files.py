from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from segflow.errors import ModelError
from segflow.models import (
    ModelMeta,
    build_model,
    list_models,
    load_model,
    read_meta,
    save_model,
    sha256_file,
)
from segflow.models.files import META_KEY, detect_format
from tests.models.tiny import tiny_model


def _input(meta: ModelMeta, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    sizes = [meta.output_stride * (i + 1) for i in range(meta.spatial_dims)]
    return torch.randn(batch, meta.in_channels, *sizes, generator=gen)


@pytest.mark.parametrize("arch", list_models())
def test_save_load_gives_identical_outputs(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, meta = tiny_model(arch)
    module.eval()
    # non-default batch-norm statistics must survive too
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "model.safetensors"
    digest = save_model(module, meta, path)
    loaded = load_model(path)
    assert loaded.runtime == "torch" and loaded.path == path
    assert loaded.sha256 == digest == sha256_file(path)
    assert loaded.meta == meta
    assert not loaded.module.training
    x = _input(meta)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), module(x))


def test_one_file_with_json_metadata(tiny_file: Callable[[str], Path]) -> None:
    path = tiny_file("unet2d")
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
    meta = ModelMeta.model_validate(json.loads(header[META_KEY]))
    assert meta.arch == "unet2d" and meta.output_stride == 4
    assert read_meta(path) == meta
    assert list(path.parent.glob("*.tmp")) == []  # atomic write leaves nothing behind
    assert detect_format(path) == "safetensors"


def test_truncated_file_is_refused(tiny_file: Callable[[str], Path], tmp_path: Path) -> None:
    data = tiny_file("unet2d").read_bytes()
    for cut, what in [(len(data) - 100, "truncated"), (200, "truncated"), (5, "truncated")]:
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelError, match=what) as info:
            load_model(bad)
        assert "\n" not in str(info.value) and bad.name in str(info.value)


def test_corrupt_header_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelError, match="corrupt"):
        load_model(bad)


def test_weights_not_matching_the_architecture(
    tiny_file: Callable[[str], Path], tmp_path: Path
) -> None:
    src = tiny_file("unet2d")
    weights = load_file(str(src))
    meta = read_meta(src)
    # same weights, metadata claiming one more class: the head no longer fits
    other = meta.model_copy(update={"classes": (*meta.classes, meta.classes[0])})
    bad = tmp_path / "mismatch.safetensors"
    save_file(weights, str(bad), metadata={META_KEY: other.model_dump_json()})
    with pytest.raises(ModelError, match=r"do not match architecture unet2d.*other shapes") as info:
        load_model(bad)
    assert "head.weight" in str(info.value) and "\n" not in str(info.value)
    # metadata describing a different architecture altogether
    deeper = meta.model_copy(update={"arch_kwargs": {**meta.arch_kwargs, "depth": 3}})
    save_file(weights, str(bad), metadata={META_KEY: deeper.model_dump_json()})
    with pytest.raises(ModelError, match="missing"):
        load_model(bad)


def test_save_checks_module_against_meta(tmp_path: Path) -> None:
    module, meta = tiny_model("unet2d")
    wrong = meta.model_copy(update={"arch_kwargs": {**meta.arch_kwargs, "base_channels": 8}})
    with pytest.raises(ModelError, match="do not match"):
        save_model(module, wrong, tmp_path / "m.safetensors")
    with pytest.raises(ModelError, match="output_stride"):
        save_model(module, meta.model_copy(update={"output_stride": 2}), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_safetensors_without_segflow_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelError, match="without segflow metadata"):
        load_model(path)


def test_invalid_metadata_names_the_field(tmp_path: Path) -> None:
    _, meta = tiny_model("unet2d")
    data = meta.model_dump(mode="json")
    data["in_channels"] = 0
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={META_KEY: json.dumps(data)})
    with pytest.raises(ModelError, match=r"invalid model metadata.*in_channels"):
        load_model(path)


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    odd = tmp_path / "model.xyz"
    odd.write_text("hello")
    with pytest.raises(ModelError, match="unknown model file type"):
        load_model(odd)


def test_legacy_state_dict_with_sidecar(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, meta = tiny_model("fcn8s")
    module.eval()
    pt = tmp_path / "trained.pth"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}}, pt
    )
    with pytest.raises(ModelError, match="sidecar"):
        load_model(pt)
    (tmp_path / "trained.yaml").write_text(yaml.safe_dump(meta.model_dump(mode="json")))
    loaded = load_model(pt)
    assert loaded.runtime == "torch" and loaded.meta == meta
    x = _input(meta)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), module(x))


def test_legacy_state_dict_for_another_architecture(tmp_path: Path) -> None:
    module, meta = tiny_model("unet2d")
    pt = tmp_path / "m.pt"
    torch.save(module.state_dict(), pt)
    sidecar = meta.model_copy(update={"arch": "unet3d", "spatial_dims": 3})
    (tmp_path / "m.json").write_text(sidecar.model_dump_json())
    with pytest.raises(ModelError, match="do not match architecture unet3d"):
        load_model(pt)


def test_build_model_from_saved_meta(tiny_file: Callable[[str], Path]) -> None:
    meta = read_meta(tiny_file("pspnet"))
    module = build_model(meta)
    assert set(module.state_dict()) == set(load_file(str(tiny_file("pspnet"))))
