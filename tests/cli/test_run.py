"""``segflow run`` with ensembles: from a spec's ``model:`` (a list of files or a folder, with
optional ``weights:``) and from ``-m``/``--weights``, through the real command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from segflow import segment
from segflow.cli.main import app
from tests.conftest import LoadedModel, pixel_model, save, textured, write_tif

RUN = ["--device", "cpu", "--patch-size", "64", "--probabilities", "float16"]
WEIGHTS = [
    [[1.0, 0.0, 0.2], [0.0, 1.0, -0.3], [0.1, 0.1, 1.0]],
    [[0.5, 0.5, 0.0], [0.0, 1.5, 0.0], [-0.2, 0.0, 1.2]],
    [[1.2, -0.1, 0.0], [0.3, 0.7, 0.0], [0.0, 0.4, 0.6]],
]


def _fold(k: int, **meta: Any) -> LoadedModel:
    model = pixel_model(WEIGHTS[k], [0.0, 0.1 * k, -0.1 * k])
    return LoadedModel(**{**model.__dict__, "meta": model.meta.model_copy(update=meta)})


@pytest.fixture
def folds(tmp_path: Path) -> list[Path]:
    """Three pointwise 3-band, 3-class models in ``folds/``, disagreeing enough to matter."""
    (tmp_path / "folds").mkdir()
    return [save(_fold(k), tmp_path / "folds" / f"fold{k}.safetensors") for k in range(3)]


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_tif(tmp_path / "scene.tif", textured((96, 80), 3, seed=4), tile=None)


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def _arrays(store: Path) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(store, mode="r")
    return group["labels"][...], group["probabilities"][...]


def _same(store: Path, reference: Path) -> None:
    for got, want in zip(_arrays(store), _arrays(reference), strict=True):
        np.testing.assert_array_equal(got, want)


def _invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_spec_ensemble_with_weights_is_the_library_ensemble(
    tmp_path: Path, folds: list[Path], scene: Path
) -> None:
    spec = _spec(tmp_path, "model: [folds/fold0.safetensors, folds/fold1.safetensors,"
                           " folds/fold2.safetensors]\nweights: [1, 2, 0.5]\n")  # fmt: skip
    result = _invoke("run", scene, "--spec", spec, "-o", tmp_path / "spec.zarr", "--no-flow", *RUN)
    assert result.exit_code == 0, result.output
    library = segment(scene, folds, tmp_path / "lib.zarr", weights=[1.0, 2.0, 0.5],
                      device="cpu", patch_size=64, probabilities="float16")  # fmt: skip
    assert not isinstance(library, list) and library.status == "complete"
    _same(tmp_path / "spec.zarr", tmp_path / "lib.zarr")
    provenance = zarr.open_group(tmp_path / "spec.zarr", mode="r").attrs["segflow"]["provenance"]
    assert [m["path"] for m in provenance["ensemble"]["members"]] == [str(f) for f in folds]
    assert provenance["ensemble"]["weights"] == [1.0, 2.0, 0.5]
    # the weights matter: equal weights give other probabilities
    equal = segment(scene, folds, tmp_path / "equal.zarr", device="cpu", patch_size=64,
                    probabilities="float16")  # fmt: skip
    assert not isinstance(equal, list)
    assert not np.array_equal(
        _arrays(tmp_path / "equal.zarr")[1], _arrays(tmp_path / "lib.zarr")[1]
    )
    # --weights on the command line replaces the spec's, for the spec's members
    again = _invoke("run", scene, "--spec", spec, "-o", tmp_path / "w.zarr", "--no-flow",
                    "--weights", "1,1,1", *RUN)  # fmt: skip
    assert again.exit_code == 0, again.output
    _same(tmp_path / "w.zarr", tmp_path / "equal.zarr")


def test_a_spec_folder_of_folds_runs_as_a_flow_run(
    tmp_path: Path, folds: list[Path], scene: Path, prefect_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    spec = _spec(tmp_path, "model: folds\nweights: [0.5, 1, 2]\n")
    result = _invoke("run", scene, "--spec", spec, "-o", tmp_path / "flow.zarr", *RUN)
    assert result.exit_code == 0, result.output
    library = segment(scene, folds, tmp_path / "lib.zarr", weights=[0.5, 1.0, 2.0],
                      device="cpu", patch_size=64, probabilities="float16")  # fmt: skip
    assert not isinstance(library, list)
    _same(tmp_path / "flow.zarr", tmp_path / "lib.zarr")


def test_command_line_models_and_weights_make_an_ensemble(
    tmp_path: Path, folds: list[Path], scene: Path
) -> None:
    args = ["-m", folds[0], "-m", folds[1], "--weights", "3,1"]
    result = _invoke("run", scene, *args, "-o", tmp_path / "cli.zarr", "--no-flow", *RUN)
    assert result.exit_code == 0, result.output
    library = segment(scene, folds[:2], tmp_path / "lib.zarr", weights=[3.0, 1.0],
                      device="cpu", patch_size=64, probabilities="float16")  # fmt: skip
    assert not isinstance(library, list)
    _same(tmp_path / "cli.zarr", tmp_path / "lib.zarr")


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        ("model: folds\nweights: [1, 2]\n", [], "2 weights for 3 ensemble models"),
        ("model: folds/fold0.safetensors\nweights: [1]\n", [], "weights are for ensembles"),
        ("model: folds\n", ["--weights", "1,0,-1"], "non-negative and not all zero"),
        ("model: [folds/fold0.safetensors, more]\n", [], "disagree on classes"),
        ("model: [folds/fold0.safetensors, coarse]\n", [], "disagree on resolution"),
        ("model: [folds/fold0.safetensors, bands4]\n", [], "disagree on input channels"),
        ("model: [folds/fold0.safetensors, gone.safetensors]\n", [], "gone.safetensors not found"),
        ("weights: [1, 1]\n", [], "weights: name the ensemble's models in 'model:' too"),
    ],
)
def test_ensemble_mistakes_are_one_line_and_leave_no_store(
    tmp_path: Path, folds: list[Path], scene: Path, spec: str, extra: list[str], message: str
) -> None:
    (tmp_path / "more").mkdir()  # two 4-class models: they agree with each other, not fold0
    for k in range(2):
        wide = pixel_model([[1.0, 0.0, 0.0]] * 4, [0.0, 0.1, 0.2, 0.3 * k])
        save(wide, tmp_path / "more" / f"wide{k}.safetensors")
    save(_fold(1, resolution=20.0), tmp_path / "coarse")  # a model file is any name
    save(pixel_model([[1.0, 0.0, 0.0, 0.0]] * 3, [0.0] * 3), tmp_path / "bands4")
    path = _spec(tmp_path, spec)
    out = tmp_path / "x.zarr"
    result = _invoke("run", scene, "--spec", path, "-o", out, "--no-flow", *RUN, *extra)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()
