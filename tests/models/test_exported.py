from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from segflow.errors import ModelError
from segflow.models import export_model, load_model, read_meta
from segflow.models.exported import (
    OnnxModule,
    default_sidecar_path,
    find_sidecar,
    import_onnxruntime,
    read_sidecar,
    write_sidecar,
)

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def onnx_file(tiny_file: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "unet2d.onnx"
    export_model(tiny_file("unet2d"), "onnx", out)
    return out


def test_sidecar_round_trip_yaml_and_json(tiny_file: Callable[[str], Path], tmp_path: Path) -> None:
    meta = read_meta(tiny_file("unet3d"))
    for name in ("m.yaml", "m.json"):
        path = write_sidecar(meta, tmp_path / name)
        assert read_sidecar(path) == meta


def test_sidecar_search_order(tmp_path: Path) -> None:
    model = tmp_path / "net.onnx"
    assert find_sidecar(model) is None
    (tmp_path / "net.json").write_text("{}")
    assert find_sidecar(model) == tmp_path / "net.json"
    (tmp_path / "net.onnx.yaml").write_text("{}")
    assert find_sidecar(model) == tmp_path / "net.onnx.yaml"  # the full name wins
    assert default_sidecar_path(model) == tmp_path / "net.onnx.yaml"
    assert default_sidecar_path(model, "json") == tmp_path / "net.onnx.json"


def test_bad_sidecars(tmp_path: Path) -> None:
    bad = tmp_path / "a.yaml"
    bad.write_text("arch: [unclosed")
    with pytest.raises(ModelError, match="cannot read metadata sidecar"):
        read_sidecar(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ModelError, match="mapping"):
        read_sidecar(bad)
    bad.write_text("arch: onnx\nin_channels: 3\n")
    with pytest.raises(ModelError, match="classes"):
        read_sidecar(bad)


def test_onnx_module_is_a_torch_module(onnx_file: Path, tiny_file: Callable[[str], Path]) -> None:
    loaded = load_model(onnx_file)
    native = load_model(tiny_file("unet2d"))
    assert loaded.runtime == "onnx" and isinstance(loaded.module, OnnxModule)
    assert loaded.meta.arch == "onnx" and loaded.meta.num_classes == native.meta.num_classes
    module = loaded.module.eval().to("cpu")
    assert module.providers == ["CPUExecutionProvider"]
    x = torch.randn(3, 3, 12, 20)
    out = module(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out, native.module(x), atol=1e-4, rtol=1e-4)
    # Dask ships modules to worker processes: the session is rebuilt there
    clone = pickle.loads(pickle.dumps(module))
    torch.testing.assert_close(clone(x), out)


def test_onnx_cuda_selects_provider(onnx_file: Path) -> None:
    ort = import_onnxruntime()
    module = OnnxModule(onnx_file)
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        module.to("cuda")
        assert module.providers[0] == "CUDAExecutionProvider"
        x = torch.randn(1, 3, 8, 8, device="cuda")
        assert module(x).device.type == "cuda"
    else:
        with pytest.warns(RuntimeWarning, match="onnxruntime-gpu"):
            module.to(torch.device("cuda"))
        assert module.providers == ["CPUExecutionProvider"]
    assert module.cpu().providers == ["CPUExecutionProvider"]


def test_onnx_rank_must_fit_spatial_dims(onnx_file: Path) -> None:
    with pytest.raises(ModelError, match="spatial_dims=3"):
        OnnxModule(onnx_file, spatial_dims=3)


def test_onnx_needs_its_sidecar(onnx_file: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(onnx_file.read_bytes())
    with pytest.raises(ModelError, match="needs a metadata sidecar"):
        load_model(lonely)
    # an explicit sidecar path works
    loaded = load_model(lonely, sidecar=Path(str(onnx_file) + ".yaml"))
    assert loaded.runtime == "onnx"


def test_corrupt_onnx(tmp_path: Path, onnx_file: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(onnx_file.read_bytes()[:100])
    (tmp_path / "bad.onnx.yaml").write_text(Path(str(onnx_file) + ".yaml").read_text())
    with pytest.raises(ModelError, match=r"cannot load ONNX file bad\.onnx"):
        load_model(bad)


def test_missing_onnxruntime_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, onnx_file: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(ModelError, match=r"pip install 'segflow\[onnx\]'"):
        load_model(onnx_file)


def test_torchscript_with_sidecar(tiny_file: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    export_model(tiny_file("unet3d"), "torchscript", out)
    loaded = load_model(out)
    assert loaded.runtime == "torchscript" and loaded.meta.spatial_dims == 3
    native = load_model(tiny_file("unet3d"))
    x = torch.randn(2, 1, 8, 12, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), native.module(x), atol=1e-5, rtol=1e-5)


def test_truncated_torchscript(tiny_file: Callable[[str], Path], tmp_path: Path) -> None:
    good = export_model(tiny_file("unet2d"), "torchscript", tmp_path / "good.ts")
    data = good.path.read_bytes()
    bad = tmp_path / "bad.ts"
    bad.write_bytes(data[: len(data) // 2])
    (tmp_path / "bad.ts.yaml").write_text(good.sidecar.read_text())
    with pytest.raises(ModelError, match=r"bad\.ts") as info:
        load_model(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"in_channels": 5}, "does not take a 2-D patch of 5 channel"),
        ({"spatial_dims": 3}, "does not take a 3-D patch"),
        ({"classes": [{"name": "only"}]}, "returns shape"),
    ],
)
def test_a_sidecar_that_disagrees_with_its_module_is_refused_at_load(
    tiny_file: Callable[[str], Path], tmp_path: Path, change: dict[str, object], message: str
) -> None:
    from segflow.errors import ModelError

    exported = tmp_path / "net.pt"
    export_model(tiny_file("unet2d"), "torchscript", exported)
    sidecar = find_sidecar(exported)
    assert sidecar is not None
    meta = read_sidecar(sidecar).model_copy(update=change)
    write_sidecar(read_sidecar(sidecar).model_validate(meta.model_dump()), sidecar)
    with pytest.raises(ModelError, match=message) as info:
        load_model(exported)
    assert "\n" not in str(info.value)


def test_a_zero_output_stride_is_refused(tmp_path: Path) -> None:
    from segflow.errors import ModelError
    from segflow.models.exported import parse_meta

    data = {"arch": "unet2d", "in_channels": 1, "classes": [{"name": "a"}], "output_stride": 0}
    with pytest.raises(ModelError, match="output_stride"):
        parse_meta(data, "m.yaml")
