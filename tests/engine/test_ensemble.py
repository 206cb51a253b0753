"""Ensembles: several models run as one, their softmax probabilities averaged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import segflow.api
from segflow import segment
from segflow.engine.ensemble import Ensemble, load_models, softmax
from segflow.engine.execute import execute
from segflow.engine.region import task_indices
from segflow.errors import ModelError
from segflow.io.open import open_source
from segflow.io.source import ReadResult, Source
from segflow.io.zarr_sink import ZarrSink
from segflow.models import LoadedModel, sha256_file
from segflow.models.meta import ClassInfo, ModelMeta, Normalization
from segflow.options import RunOptions
from segflow.plan import plan
from tests.conftest import pixel_model, save, textured, write_tif
from tests.engine.test_resample import mean_model

CLASSES = 3


class Pointwise(nn.Module):
    """Fixed logits ``a_k * x_0 + c_k * x_1 + b_k`` from elementwise operations only.

    Elementwise, so a pixel's logits are the same in a patch as in the whole image.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.a = torch.tensor(rng.normal(size=CLASSES), dtype=torch.float32)
        self.c = torch.tensor(rng.normal(size=CLASSES), dtype=torch.float32)
        self.b = torch.tensor(rng.normal(size=CLASSES), dtype=torch.float32)
        self.patches = 0  # patches this member predicted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.patches += x.shape[0]
        shape = (1, CLASSES) + (1,) * (x.ndim - 2)
        a, c, b = (t.reshape(shape) for t in (self.a, self.c, self.b))
        return x[:, :1] * a + x[:, 1:2] * c + b


def pointwise_model(seed: int, **meta: Any) -> LoadedModel:
    fields: dict[str, Any] = {
        "arch": "pointwise",
        "spatial_dims": 2,
        "in_channels": 2,
        "output_stride": 1,
        "classes": tuple(ClassInfo(name=f"c{k}") for k in range(CLASSES)),
        # inputs of -2..2: probabilities far from 0 and 1 (and exact: 64 is a power of two)
        "normalization": Normalization(mean=(128.0, 128.0), std=(64.0, 64.0)),
        **meta,
    }
    module = Pointwise(seed).eval()
    return LoadedModel(ModelMeta(**fields), module, f"pointwise-{seed}", None, "torch")


def _patches(model: LoadedModel) -> int:
    module = model.module
    assert isinstance(module, Pointwise)
    return module.patches


def outputs(store: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A store's labels, and its probabilities as stored (None without them)."""
    sink = ZarrSink.open(store)
    stored = sink.read_probabilities(decode=False) if sink.probabilities_path else None
    return sink.read_labels(), stored


class CountingSource:
    """A Source that counts its reads."""

    def __init__(self, inner: Source) -> None:
        self._inner = inner
        self.reads = 0

    def read(self, region: Any) -> ReadResult:
        self.reads += 1
        return self._inner.read(region)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[CountingSource]:
    opened: list[CountingSource] = []

    def open_counted(*args: Any, **kwargs: Any) -> CountingSource:
        source = CountingSource(open_source(*args, **kwargs))
        opened.append(source)
        return source

    monkeypatch.setattr(segflow.api, "open_source", open_counted)
    return opened


def reference_mean(image: np.ndarray, models: list[LoadedModel], weights: list[float]) -> Any:
    """The members' softmax over the whole image, weighted and averaged as the engine does."""
    x = (torch.from_numpy(image.astype(np.float32))[None] - 128.0) / 64.0
    mean = None
    with torch.inference_mode():
        for model, weight in zip(models, weights, strict=True):
            part = softmax(model.module(x)).mul_(weight)
            mean = part if mean is None else mean.add_(part)
            # the engine's softmax is torch's, up to rounding
            np.testing.assert_allclose(
                softmax(model.module(x)).numpy(),
                torch.softmax(model.module(x), 1).numpy(),
                rtol=1e-6,
                atol=1e-7,
            )
        assert mean is not None
        return mean.div_(sum(weights))[0].numpy()


@pytest.mark.parametrize("weights", [None, (3.0, 1.0, 0.5)])
def test_an_ensemble_is_exactly_the_mean_of_its_members_softmax(
    tmp_path: Path, counted: list[CountingSource], weights: tuple[float, ...] | None
) -> None:
    image = textured((150, 130), 2, seed=3)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    models = [pointwise_model(seed) for seed in (1, 2, 3)]
    result = segment(
        path,
        models,
        tmp_path / "o.zarr",
        weights=weights,
        patch_size=32,
        chunk_size=32,
        region_size=64,
        blend="center",  # each pixel from one patch: the blend adds nothing to round
        probabilities="float16",
        device="cpu",
    )
    # the input is read once per region, and every member predicts every patch
    regions = result.stats["region_tasks"]
    assert regions > 1
    assert [s.reads for s in counted] == [regions]
    predicted = result.stats["patches_predicted"]
    seen = [_patches(m) for m in models]
    # a task's last batch of a single patch goes through as a pair (see the predictor)
    assert seen == [seen[0]] * 3
    assert predicted <= seen[0] <= predicted + regions

    mean = reference_mean(image, models, list(weights or (1.0, 1.0, 1.0)))
    sink = ZarrSink.open(tmp_path / "o.zarr")
    stored = sink.read_probabilities(decode=False)
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, mean.astype(np.float16))
    np.testing.assert_array_equal(sink.read_labels(), np.argmax(mean, axis=0).astype(np.uint8))
    # averaging probabilities is not averaging logits: the two disagree somewhere
    x = (torch.from_numpy(image.astype(np.float32))[None] - 128.0) / 64.0
    logits = sum(m.module(x) for m in models)
    assert (torch.argmax(logits[0], 0).numpy() != np.argmax(mean, axis=0)).any()


def test_the_store_records_the_members(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "in.tif", textured((64, 64), 2), tile=None)
    files = [
        save(pixel_model([[1.0, 0.0], [0.0, k]], [0.0, 0.0]), tmp_path / f"f{k}.safetensors")
        for k in (1.0, 2.0)
    ]
    segment(path, files, tmp_path / "o.zarr", weights=[2, 1], device="cpu")
    recorded = ZarrSink.open(tmp_path / "o.zarr").attrs["ensemble"]
    assert [m["path"] for m in recorded["members"]] == [str(f.absolute()) for f in files]
    assert [m["sha256"] for m in recorded["members"]] == [sha256_file(f) for f in files]
    assert recorded["weights"] == [2.0, 1.0]


def test_ensemble_outputs_are_bit_identical_across_chunks_and_regions(tmp_path: Path) -> None:
    """Gaussian blending of probabilities, shared patches between regions, resampling."""
    image = textured((190, 170), 2, seed=5)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    models = Ensemble(tuple(pointwise_model(s, resolution=45.0) for s in (4, 5)))
    stores = []
    for chunk, region in ((32, 64), (48, 96), (64, None)):
        out = tmp_path / f"c{chunk}.zarr"
        segment(
            path,
            models,
            out,
            patch_size=32,
            chunk_size=chunk,
            region_size=region,
            probabilities="float16",
            device="cpu",
        )
        stores.append(outputs(out))
    for labels, probabilities in stores[1:]:
        np.testing.assert_array_equal(labels, stores[0][0])
        np.testing.assert_array_equal(probabilities, stores[0][1])


def test_a_resumed_ensemble_run_is_bit_identical(tmp_path: Path) -> None:
    image = textured((150, 130), 2, seed=7)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    models = Ensemble(tuple(pointwise_model(s) for s in (1, 2, 3)))
    options = RunOptions.from_mapping(
        {
            "patch_size": 32,
            "chunk_size": 32,
            "region_size": 64,
            "device": "cpu",
            "probabilities": "float16",
        }
    )
    segment(path, models, tmp_path / "full.zarr", options)
    # an interrupted run: only some regions written
    work = plan(open_source(path.absolute()), models, (tmp_path / "part.zarr").absolute(), options)
    tasks = task_indices(work)
    execute(work, tasks[: len(tasks) // 2])
    resumed = segment(path, models, tmp_path / "part.zarr", options, resume=True)
    assert resumed.stats["region_tasks"] == len(tasks) - len(tasks) // 2
    full, part = outputs(tmp_path / "full.zarr"), outputs(tmp_path / "part.zarr")
    np.testing.assert_array_equal(part[0], full[0])
    np.testing.assert_array_equal(part[1], full[1])


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (
            pointwise_model(9, in_channels=1, normalization=None),
            "disagree on input channels: model 1 has 2 but ",
        ),
        (
            pointwise_model(9, classes=tuple(ClassInfo(name=n) for n in "xyz")),
            "disagree on classes: model 1 has c0, c1, c2 but model 2 has x, y, z",
        ),
        (pointwise_model(9, resolution=10.0), "disagree on resolution: model 1 has none but"),
        (pointwise_model(9, normalization=None), "disagree on normalization: model 1 has {"),
    ],
)
def test_members_that_disagree_are_refused_in_one_line(other: LoadedModel, message: str) -> None:
    with pytest.raises(ModelError, match=message) as caught:
        load_models([pointwise_model(1), other])
    assert "\n" not in str(caught.value)


def test_volume_members_must_share_their_spacing() -> None:
    with pytest.raises(ModelError, match="disagree on spacing: model 1 has 2 x 2 x 2 mm but"):
        Ensemble((mean_model(3, spacing=(2.0, 2.0, 2.0)), mean_model(3, spacing=(1.0, 1.0, 1.0))))


def test_one_model_in_a_list_runs_as_that_model(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "in.tif", textured((64, 64), 2), tile=None)
    model = pointwise_model(1)
    assert load_models([model]) is model
    segment(path, [model], tmp_path / "a.zarr", device="cpu")
    segment(path, model, tmp_path / "b.zarr", device="cpu")
    np.testing.assert_array_equal(outputs(tmp_path / "a.zarr")[0], outputs(tmp_path / "b.zarr")[0])


def test_the_command_runs_repeated_models_and_a_folder_as_one_ensemble(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from segflow.cli.main import app

    path = write_tif(tmp_path / "in.tif", textured((80, 70), 2), tile=None)
    folder = tmp_path / "folds"
    folder.mkdir()
    files = [
        save(
            pixel_model([[1.0, -k], [k, 0.5], [0.2, 0.1]], [0.0, -1.0, 0.3]),
            folder / f"fold{int(k * 10)}.safetensors",
        )
        for k in (0.5, 1.5)
    ]
    (folder / "notes.json").write_text("{}")  # not a model
    runner = CliRunner()
    common = ["--no-flow", "--no-progress", "--patch-size", "32", "--device", "cpu"]
    repeated = runner.invoke(
        app,
        [
            "run",
            str(path),
            "-m",
            str(files[0]),
            "-m",
            str(files[1]),
            "-o",
            str(tmp_path / "r.zarr"),
            *common,
        ],
    )
    assert repeated.exit_code == 0, repeated.output
    from_folder = runner.invoke(
        app, ["run", str(path), "-m", str(folder), "-o", str(tmp_path / "f.zarr"), *common]
    )
    assert from_folder.exit_code == 0, from_folder.output
    api = segment(path, files, tmp_path / "api.zarr", patch_size=32, device="cpu")
    assert api.status == "complete"
    stores = [outputs(tmp_path / n)[0] for n in ("r.zarr", "f.zarr", "api.zarr")]
    for labels in stores[1:]:
        np.testing.assert_array_equal(labels, stores[0])
    missing = runner.invoke(
        app,
        [
            "run",
            str(path),
            "-m",
            str(files[0]),
            "-m",
            str(tmp_path / "nope.safetensors"),
            "-o",
            str(tmp_path / "x.zarr"),
            *common,
        ],
    )
    assert missing.exit_code != 0
    assert "nope.safetensors not found" in missing.output
