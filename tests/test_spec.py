"""Pipeline specs: validation with one-line did-you-mean errors, overrides, shipped examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segflow.errors import ConfigError
from segflow.options import BlendMode, RunOptions
from segflow.spec import Pipeline, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "pipelines").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_an_empty_spec_gives_the_default_options():
    assert parse_spec({}) == Pipeline()
    assert parse_spec({}).options == RunOptions()


def test_full_spec_to_run_options(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """
model: models/m.safetensors
device: cpu
tta: true
tiling: {patch_size: [96, 96, 64], overlap: 16, blend: Hann, sigma: 0.2, batch_size: 2}
outputs: {probabilities: float16, chunk_size: 64, nifti: true, zarr_format: 2}
input: {bands: [3, 2, 1], nodata: 0, slice_axis: 1}
dask: {scheduler: tcp://10.0.0.5:8786}
""",
        )
    )
    assert spec.model == (tmp_path / "models" / "m.safetensors").resolve()  # relative to the file
    options = spec.options
    assert options.patch_size == (96, 96, 64)
    assert options.overlap == 16 and isinstance(options.overlap, int)  # pixels
    assert options.blend is BlendMode.HANN and options.tta is True
    assert options.probabilities == "float16" and options.chunk_size == 64
    assert options.bands == (3, 2, 1) and options.nodata == 0 and options.slice_axis == 1
    assert options.nifti and options.scheduler == "tcp://10.0.0.5:8786"
    assert options.zarr_format == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tiling: {overlpa: 0.5}", "unknown key 'tiling.overlpa'; did you mean 'overlap'?"),
        ("tilling: {overlap: 0.5}", "unknown key 'tilling'; did you mean 'tiling'?"),
        ("modle: m.safetensors", "unknown key 'modle'; did you mean 'model'?"),
        ("outputs: {probabilites: uint8}", "did you mean 'probabilities'?"),
        ("tiling: {blend: gausian}", "did you mean 'gaussian'?"),
        ("dask: {scheduler: thread}", "did you mean 'threads'?"),
        (
            "tiling: {batch_size: 0}",
            "tiling.batch_size: batch size must be at least 1",
        ),
        ("outputs: {probabilities: uint9}", "outputs.probabilities"),
        ("input: {slice_axis: 3}", "input.slice_axis"),
        ("tiling: [1, 2]", "tiling"),
        ("- a\n- b", "a mapping of keys"),
        ("tiling: {overlap: [", "not valid YAML at line"),
        ("dask: {region_size: 0}", "dask.region_size: region size must be at least 1"),
        ("tiling: {overlap: .nan}", "tiling.overlap: overlap must be a finite number"),
        ("tiling: {batch_size: many}", "tiling.batch_size: Input should be a valid integer"),
    ],
)
def test_mistakes_are_one_line_config_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    text_of = str(info.value)
    assert message in text_of and str(path) in text_of
    assert "\n" not in text_of


def test_missing_spec_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "nope.yaml")


def test_empty_file_is_the_defaults(tmp_path):
    assert load_spec(write(tmp_path, "")) == Pipeline()


def test_command_line_overrides_use_the_flat_option_names(tmp_path):
    base = parse_spec({"tiling": {"patch_size": 256, "overlap": 0.5}, "device": "cuda"})
    merged = base.with_overrides(
        model=tmp_path / "m.safetensors",
        patch_size="128,128",
        batch_size=None,
        device="cpu",
        scheduler="local",
        workers=2,
        region_size=512,
        nifti=True,
    )
    assert merged.options.patch_size == (128, 128)
    assert merged.options.overlap == 0.5  # kept
    assert merged.options.batch_size is None  # not given: stays automatic
    assert merged.options.device == "cpu" and merged.model == tmp_path / "m.safetensors"
    assert merged.options.scheduler == "local" and merged.options.workers == 2
    assert merged.options.region_size == 512 and merged.options.nifti
    assert base.options.device == "cuda"  # the original is unchanged
    with pytest.raises(ConfigError, match="unknown option 'patchsize'; did you mean 'patch_size'"):
        base.with_overrides(patchsize=3)
    with pytest.raises(ConfigError, match="batch size"):
        base.with_overrides(batch_size=-1)


def test_oversized_spec_is_refused(tmp_path):
    path = write(tmp_path, "# " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_spec(path)


def test_require_model(tmp_path):
    with pytest.raises(ConfigError, match="no model given"):
        Pipeline().require_model()
    with pytest.raises(ConfigError, match="not found"):
        parse_spec({"model": str(tmp_path / "x.safetensors")}).require_model()
    (tmp_path / "x.safetensors").write_bytes(b"")
    assert parse_spec({"model": str(tmp_path / "x.safetensors")}).require_model().is_file()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_validate(path):
    spec = load_spec(path)
    assert spec.model is not None and spec.model.is_absolute()
    assert spec.name == path.stem
    assert spec.options.blend is BlendMode.GAUSSIAN


def test_examples_are_the_expected_set():
    assert {p.stem for p in EXAMPLES} >= {"landcover", "brain-mri", "ct-organs", "demo"}


def test_a_spec_can_ask_for_post_processing(tmp_path):
    spec = load_spec(
        write(tmp_path, "postprocess: {keep_largest: [liver, 2], min_size: 5mL, sieve: 10}\n")
    )
    asked = spec.options.postprocess_options()
    assert asked is not None
    assert asked["keep_largest"] == ["liver", "2"] and asked["min_size"] == "5mL"
    assert asked["sieve"] == "10" and asked["connectivity"] == "full"
    with pytest.raises(ConfigError, match=r"postprocess\.connectivity: .*did you mean 'face'"):
        parse_spec({"postprocess": {"connectivity": "fase"}})


def test_a_model_uri_stays_a_uri(tmp_path):
    from segflow.io.uris import ObjectPath

    spec = load_spec(write(tmp_path, "model: s3://models/lc.safetensors\n"))
    assert spec.model == ObjectPath("s3://models/lc.safetensors")  # not made relative to the file
    assert parse_spec({"model": "gs://m/a.onnx"}).model == ObjectPath("gs://m/a.onnx")
    override = Pipeline().with_overrides(model="s3://models/other.safetensors")
    assert override.model == ObjectPath("s3://models/other.safetensors")


def _fold_files(folder: Path, count: int) -> list[Path]:
    """Files that name models; the spec only lists them (their content is the engine's)."""
    folder.mkdir(exist_ok=True)
    files = [folder / f"fold{k}.safetensors" for k in range(count)]
    for file in files:
        file.write_bytes(b"")
    return files


def test_a_spec_can_name_an_ensemble_by_files_or_by_folder(tmp_path):
    folds = _fold_files(tmp_path / "folds", 3)
    text = "model: [folds/fold0.safetensors, folds/fold2.safetensors]\nweights: [1, 3]\n"
    listed = load_spec(write(tmp_path, text))
    assert listed.ensemble == (folds[0], folds[2]) and listed.weights == (1.0, 3.0)
    assert listed.model_files() == listed.ensemble_files() == [folds[0], folds[2]]
    assert listed.require_model() == folds[0]  # the first member, for what needs one file
    folder = load_spec(write(tmp_path, "model: folds\nweights: [1, 1, 2]\n"))
    assert folder.ensemble == () and folder.model == tmp_path / "folds"
    assert folder.model_files() == folds and folder.weights == (1.0, 1.0, 2.0)
    single = load_spec(write(tmp_path, "model: [folds/fold1.safetensors]\n"))
    assert single.ensemble == () and single.model_files() == [folds[1]]
    assert single.ensemble_files() == []


def test_command_line_models_replace_the_spec_ensemble_and_its_weights(tmp_path):
    folds = _fold_files(tmp_path / "folds", 2)
    spec = parse_spec({"model": [str(f) for f in folds], "weights": [1, 2]})
    assert spec.with_overrides(weights=[2, 1]).weights == (2.0, 1.0)  # the spec's members
    assert spec.with_overrides(device="cpu").weights == (1.0, 2.0)
    other = spec.with_overrides(model=folds[1])
    assert other.ensemble == () and other.weights is None and other.model_files() == [folds[1]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "folds", "weights": [1, 2]}, "2 weights for 3 ensemble models"),
        ({"model": "folds/fold0.safetensors", "weights": [1]}, "weights are for ensembles"),
        ({"model": "folds", "weights": [1, -1, 1]}, "non-negative and not all zero"),
        ({"model": ["folds/fold0.safetensors", "folds/gone.safetensors"]}, "gone.safetensors not"),
        ({"model": "empty"}, "holds no model files"),
    ],
)
def test_ensemble_mistakes_are_one_line_before_any_model_loads(tmp_path, data, message):
    _fold_files(tmp_path / "folds", 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=message) as error:
        load_spec(write(tmp_path, yaml.safe_dump(data))).model_files()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": []}, "model: give a model file, a list of them or a folder"),
        ({"weights": [1, 2]}, "weights: name the ensemble's models in 'model:' too"),
        ({"model": "m.safetensors", "weights": "heavy"}, "weights: Input should be a valid list"),
    ],
)
def test_ensemble_spec_shape_mistakes_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(data)


def test_a_spec_can_ask_for_the_uncertainty():
    assert parse_spec({"outputs": {"uncertainty": True}}).options.uncertainty is True
    with pytest.raises(ConfigError, match=r"unknown key 'outputs\.uncertanty'"):
        parse_spec({"outputs": {"uncertanty": True}})


def test_a_spec_runs_one_worker_per_device():
    pipeline = parse_spec({"dask": {"devices": ["cuda:0", 1]}})
    assert pipeline.options.devices == ("cuda:0", "cuda:1")
    assert pipeline.options.scheduler == "local" and pipeline.options.device == "cuda"
    assert parse_spec({"dask": {"devices": "all"}}).options.devices == ("all",)
    with pytest.raises(ConfigError, match=r"dask\.devices: devices takes CUDA devices"):
        parse_spec({"dask": {"devices": "mps"}})
    with pytest.raises(ConfigError, match=r"dask\.devices: .*contradicts devices cuda:0"):
        parse_spec({"dask": {"devices": [0], "scheduler": "sync"}})
