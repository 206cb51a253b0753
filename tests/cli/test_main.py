"""The segflow command as users run it: real processes, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from scipy import special, stats

from segflow.models import create_model
from segflow.models.meta import ClassInfo, ModelMeta, Normalization
from segflow.plan import TASK_TARGET_2D
from tests.conftest import LoadedModel, save, textured, threshold_model, write_tif

SEGFLOW = str(Path(sys.executable).parent / "segflow")


@pytest.fixture(autouse=True)
def _prefect_api(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Command-line runs record flow runs on one test server instead of starting their own."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)


def run(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.run(
        [SEGFLOW, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return save(threshold_model(100.0, spatial_dims=2), tmp_path / "threshold.safetensors")


def test_run_writes_a_complete_store(tmp_path, model_file):
    image = textured((200, 150), 1)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    result = run("run", path, "-m", model_file, "-o", tmp_path / "o.zarr", "--patch-size", "64")
    assert result.returncode == 0, result.stderr
    group = zarr.open_group(tmp_path / "o.zarr", mode="r")
    assert group.attrs["segflow"]["complete"] is True
    np.testing.assert_array_equal(group["labels"][...], (image[0] > 100).astype(np.uint8))


@pytest.mark.parametrize("flow", ["--flow", "--no-flow"])
def test_zarr_format_2_makes_a_store_gdal_opens_and_resumes(tmp_path, model_file, flow):
    import rasterio

    image = textured((200, 150), 1)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    out = tmp_path / "o.zarr"
    args = ["--patch-size", "64", "--chunk-size", "64", "--zarr-format", "2", flow]
    result = run("run", path, "-m", model_file, "-o", out, *args)
    assert result.returncode == 0, result.stderr
    with rasterio.open(path) as src, rasterio.open(f'ZARR:"{out}":/labels') as ds:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
        np.testing.assert_array_equal(ds.read(1), (image[0] > 100).astype(np.uint8))
    again = run("run", path, "-m", model_file, "-o", out, *args, "--resume")
    assert again.returncode == 0, again.stderr
    if flow == "--no-flow":  # the flow skips a finished store before opening it
        v3 = run("run", path, "-m", model_file, "-o", out, *args[:4], flow, "--resume")
        assert v3.returncode == 1 and "zarr format differs (2 vs 3)" in v3.stderr


def test_inputs_can_be_given_with_dash_i_as_in_nnunet(tmp_path, model_file):
    image = textured((64, 80), 1)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    out = tmp_path / "o.zarr"
    result = run("run", "-i", path, "-m", model_file, "-o", out, "--no-flow", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    labels = zarr.open_group(out, mode="r")["labels"][...]
    np.testing.assert_array_equal(labels, (image[0] > 100).astype(np.uint8))
    missing = run("run", "-m", model_file, "-o", tmp_path / "p.zarr")
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "error: no input given; pass files, folders or globs (or -i PATH)"
    )


def test_the_first_line_at_a_terminal_says_what_runs():
    from segflow.cli.run import start_message
    from segflow.inputs import InputItem

    one = [InputItem("scene", "/d/scene.tif", "/o/scene.zarr")]
    assert start_message(one, [Path("m.safetensors")], True) == (
        "segmenting scene -> /o/scene.zarr with m.safetensors, recorded as a Prefect flow run; "
        "loading the model..."
    )
    two = [*one, InputItem("b", "/d/b.tif", "/o/b.zarr")]
    assert start_message(two, [Path("a"), Path("b")], False) == (
        "segmenting 2 inputs -> /o with 2 models; loading the model..."
    )


@pytest.mark.parametrize("flow", ["--flow", "--no-flow"])
def test_region_size_cuts_the_run_into_more_tasks(tmp_path, model_file, flow):
    image = textured((200, 150), 1)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    out = tmp_path / "o.zarr"
    sizes = ["--patch-size", "64", "--chunk-size", "64", "--region-size", "64"]
    result = run("run", path, "-m", model_file, "-o", out, *sizes, flow)
    assert result.returncode == 0, result.stderr
    group = zarr.open_group(out, mode="r")
    assert group.attrs["segflow"]["summary"]["region_tasks"] == 4 * 3
    np.testing.assert_array_equal(group["labels"][...], (image[0] > 100).astype(np.uint8))


@pytest.mark.parametrize("flow", ["--flow", "--no-flow"])
def test_a_region_size_below_one_is_one_line(tmp_path, model_file, flow):
    path = write_tif(tmp_path / "in.tif", textured((64, 64), 1), tile=None)
    result = run(
        "run", path, "-m", model_file, "-o", tmp_path / "o.zarr", "--region-size", "0", flow
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "region" in lines[0], result.stderr
    assert not (tmp_path / "o.zarr").exists()


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = write_tif(tmp / "good.tif", textured((300, 300), 1), tile=256)
    truncated = tmp / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp / "empty.tif"
    empty.write_bytes(b"")
    text = tmp / "notes.tif"
    text.write_text("this is not a raster\n")
    bands = write_tif(tmp / "bands.tif", textured((64, 64), 3), tile=None)
    nan = write_tif(tmp / "nan.tif", np.full((1, 64, 64), np.nan, np.float32), tile=None)
    return {
        "truncated": (truncated, "truncated"),
        "empty": (empty, "empty"),
        "not a raster": (text, "not a raster"),
        "band count": (bands, "expects 1"),
        "all nan": (nan, "no valid pixels"),
    }


@pytest.mark.parametrize("case", ["truncated", "empty", "not a raster", "band count", "all nan"])
def test_bad_input_gets_one_line_and_no_complete_looking_output(tmp_path, model_file, case):
    path, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "o.zarr"
    result = run("run", path, "-m", model_file, "-o", out)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and message in lines[0], lines[0]
    assert not out.exists()


def test_unwritable_output_is_refused(tmp_path, model_file):
    path = write_tif(tmp_path / "in.tif", textured((64, 64), 1), tile=None)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("run", path, "-m", model_file, "-o", blocker / "o.zarr")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:")


def test_missing_model_file_is_one_line(tmp_path):
    path = write_tif(tmp_path / "in.tif", textured((64, 64), 1), tile=None)
    result = run("run", path, "-m", tmp_path / "nope.safetensors", "-o", tmp_path / "o.zarr")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:")


def _slow_model_file(tmp: Path) -> Path:
    torch.manual_seed(0)
    module = create_model("unet2d", in_channels=3, classes=3, depth=2, base_channels=16).eval()
    meta = ModelMeta(
        arch="unet2d",
        arch_kwargs={"depth": 2, "base_channels": 16, "norm": "batch"},
        in_channels=3,
        output_stride=4,
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(3)),
        normalization=Normalization(mean=(128.0,) * 3, std=(64.0,) * 3),
    )
    return save(
        LoadedModel(meta=meta, module=module, sha256="", path=None, runtime="torch"),
        tmp / "unet.safetensors",
    )


def test_resume_after_sigkill_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    model = _slow_model_file(tmp_path)
    # three region tasks one after another: killed once the first has written, the
    # run still has two regions of forwards ahead of it
    path = write_tif(tmp_path / "in.tif", textured((3 * TASK_TARGET_2D, 128), 3, seed=9), tile=128)
    args = [
        "-m",
        model,
        "--patch-size",
        "128",
        "--chunk-size",
        "128",
        "--workers",
        "1",
        "--device",
        "cpu",
    ]
    reference = run("run", path, "-o", tmp_path / "ref.zarr", *args)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed.zarr"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(
        [SEGFLOW, "run", str(path), "-o", str(out), *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done_dir = out / "_segflow" / "done"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = (
            [p for p in done_dir.rglob("*") if p.is_file() and p.name != "zarr.json"]
            if done_dir.exists()
            else []
        )
        if done or proc.poll() is not None:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    group = zarr.open_group(out, mode="r")
    assert group.attrs["segflow"]["complete"] is False, "killed too late: the run had finished"

    resumed = run("run", path, "-o", out, "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr
    a = zarr.open_group(tmp_path / "ref.zarr", mode="r")
    b = zarr.open_group(out, mode="r")
    assert b.attrs["segflow"]["complete"] is True
    np.testing.assert_array_equal(a["labels"][...], b["labels"][...])
    # the summary of a resumed run counts the whole store, not only what the resume computed
    summary_a, summary_b = a.attrs["segflow"]["summary"], b.attrs["segflow"]["summary"]
    assert summary_b["class_pixel_counts"] == summary_a["class_pixel_counts"]
    assert summary_b["valid_pixels"] == summary_a["valid_pixels"]


@pytest.mark.parametrize("flow", ["--flow", "--no-flow"])
def test_a_folder_is_the_same_batch_with_and_without_a_flow(tmp_path, model_file, flow):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in ("a", "b"):
        write_tif(folder / f"{name}.tif", textured((40, 30), 1), tile=None)
    (folder / "c.tif").write_bytes(b"not a tiff")
    out = tmp_path / "out"
    result = run("run", folder, "-m", model_file, "-o", out, "--patch-size", "16", flow)
    assert result.returncode == 3, result.stderr  # one input failed, the others finished
    assert "c.tif" in result.stderr and "Traceback" not in result.stderr
    for name in ("a", "b"):
        group = zarr.open_group(out / f"{name}.zarr", mode="r")
        assert group.attrs["segflow"]["complete"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--overlap", "abc"], "overlap is a fraction below 1"),
        (["--overlap", "nan"], "overlap must be a finite number"),
        (["--blend", "gausian"], "did you mean 'gaussian'?"),
        (["--scheduler", "thread"], "did you mean 'threads'?"),
        (["--resume", "--overwrite"], "exclude each other"),
        (["--zarr-format", "4"], "zarr format must be 2 (GDAL, QGIS) or 3"),
    ],
)
def test_option_mistakes_fail_in_one_line_before_any_work(tmp_path, model_file, args, message):
    path = write_tif(tmp_path / "in.tif", textured((32, 32), 1), tile=None)
    started = time.perf_counter()
    result = run("run", path, "-m", model_file, "-o", tmp_path / "o.zarr", *args)
    assert time.perf_counter() - started < 30  # no model load, no flow run (timing is loose)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_a_missing_input_fails_before_torch_is_imported(tmp_path, model_file):
    code = (
        "import sys; from segflow.cli.main import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "run", str(tmp_path / "none.tif"), "-m", str(model_file)],
        capture_output=True,
        text=True,
    )
    assert result.stdout.split() == ["False", "1"], result.stderr
    assert "file not found" in result.stderr


@pytest.mark.parametrize("flow", ["--flow", "--no-flow"])
def test_a_run_can_end_with_post_processing(tmp_path, model_file, flow):
    import scipy.ndimage as ndi

    image = textured((96, 80), 1)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    out = tmp_path / "o.zarr"
    args = ["--patch-size", "32", "--chunk-size", "32", "--keep-largest", "1", flow]
    result = run("run", path, "-m", model_file, "-o", out, *args)
    assert result.returncode == 0, result.stderr
    assert "cleaned" in result.stdout
    clean = zarr.open_group(tmp_path / "o_clean.zarr", mode="r")["labels"][...]
    raw = (image[0] > 100).astype(np.uint8)
    components, count = ndi.label(raw, structure=np.ones((3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    expected = (components == 1 + int(np.argmax(sizes))).astype(np.uint8) if count else raw
    np.testing.assert_array_equal(clean, expected)


def test_post_processing_mistakes_fail_before_the_run(tmp_path, model_file):
    path = write_tif(tmp_path / "in.tif", textured((32, 32), 1), tile=None)
    for args, message in (
        (["--min-size", "0"], "min-size"),
        (["--keep-largest", "lvier"], "lvier"),
        (["--connectivity", "fase"], "did you mean 'face'"),
    ):
        result = run("run", path, "-m", model_file, "-o", tmp_path / "o.zarr", *args, "--no-flow")
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("flow", ["--flow", "--no-flow"])
def test_uncertainty_flag_adds_the_array_and_resumes(tmp_path, model_file, flow):
    image = textured((90, 70), 1)
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    out = tmp_path / "o.zarr"
    args = ["--patch-size", "32", "--chunk-size", "32", "--device", "cpu", flow]
    result = run("run", path, "-m", model_file, "-o", out, *args, "--uncertainty")
    assert result.returncode == 0, result.stderr
    group = zarr.open_group(out, mode="r")
    u = group["uncertainty"][...]
    # the threshold model's logits are (0, value - 100): the binary entropy of their softmax
    q = special.expit(image[0].astype(np.float64) - 100.0)
    expected = np.rint(254 * stats.entropy(np.stack([q, 1 - q]), base=2, axis=0))
    np.testing.assert_array_equal(u, expected.astype(np.uint8))
    assert u.max() == 254 and u.min() == 0
    again = run("run", path, "-m", model_file, "-o", out, *args, "--uncertainty", "--resume")
    assert again.returncode == 0, again.stderr
    if flow == "--no-flow":  # the flow skips a finished store before opening it
        without = run("run", path, "-m", model_file, "-o", out, *args, "--resume")
        assert without.returncode == 1 and "cannot resume" in without.stderr
