"""Runs against a real S3-compatible server on loopback (moto, credentials enforced).

s3:// in and out equals a local run bit for bit; a SIGKILLed run resumes on S3 to the
same bytes; COG export to S3; bad storage fails in one line with nothing that looks
complete; credentials reach no store, report or error line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import s3fs
import zarr

from segflow import segment
from tests.conftest import pixel_model, save, textured, write_tif
from tests.io.s3server import S3Server

SEGFLOW = str(Path(sys.executable).parent / "segflow")
OPTIONS = {"patch_size": 64, "chunk_size": 64, "device": "cpu", "probabilities": "uint8"}
CLI_OPTIONS = ["--patch-size", "64", "--chunk-size", "64", "--device", "cpu", "--no-flow"]


def _fs(server: S3Server) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        key=server.key_id, secret=server.secret, endpoint_url=server.url, skip_instance_cache=True
    )


def _model():
    return pixel_model([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], [0.0, 0.0, 0.1])


def _scene(tmp_path: Path, shape: tuple[int, int] = (200, 300)) -> Path:
    return write_tif(
        tmp_path / "scene.tif", textured(shape, 3), tile=None if min(shape) < 256 else 256
    )


def _arrays(store: str | Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {
        name: np.asarray(group[name][...]) for name in ("labels", "probabilities") if name in group
    }


def test_s3_in_and_out_equals_a_local_run_bit_for_bit(tmp_path, s3):
    bucket = s3.new_bucket()
    scene = _scene(tmp_path)
    _fs(s3).put_file(str(scene), f"{bucket}/in/scene.tif")
    model = _model()
    local = segment(scene, model, tmp_path / "local.zarr", **OPTIONS)
    remote = segment(
        f"s3://{bucket}/in/scene.tif", model, f"s3://{bucket}/out/scene.zarr", **OPTIONS
    )
    assert local.status == remote.status == "complete", remote.error
    a, b = _arrays(tmp_path / "local.zarr"), _arrays(f"s3://{bucket}/out/scene.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    info = zarr.open_group(f"s3://{bucket}/out/scene.zarr", mode="r").attrs["segflow"]
    assert info["complete"] is True
    assert info["provenance"]["input"]["path"] == f"s3://{bucket}/in/scene.tif"
    # a resume of the finished store does nothing and keeps it complete
    again = segment(
        f"s3://{bucket}/in/scene.tif",
        model,
        f"s3://{bucket}/out/scene.zarr",
        resume=True,
        **OPTIONS,
    )
    assert again.status == "complete"


def test_credentials_reach_no_object_of_the_store(tmp_path, s3):
    bucket = s3.new_bucket()
    scene = _scene(tmp_path, (64, 64))
    _fs(s3).put_file(str(scene), f"{bucket}/scene.tif")
    result = segment(f"s3://{bucket}/scene.tif", _model(), f"s3://{bucket}/o.zarr", **OPTIONS)
    assert result.status == "complete"
    fs = _fs(s3)
    texts = [fs.cat_file(k) for k in fs.find(f"{bucket}/o.zarr") if k.endswith(".json")]
    assert texts
    for text in texts:
        assert s3.secret.encode() not in text and s3.key_id.encode() not in text


def test_a_prefix_in_storage_is_a_batch(tmp_path, s3):
    from segflow.inputs import collect_inputs, plan_items
    from segflow.io.uris import ObjectPath

    bucket = s3.new_bucket()
    fs = _fs(s3)
    scene = _scene(tmp_path, (64, 64))
    for name in ("b.tif", "a.tif", "notes.txt"):
        fs.put_file(str(scene), f"{bucket}/scenes/{name}")
    found = collect_inputs(f"s3://{bucket}/scenes")
    assert [str(p) for _, p in found] == [
        f"s3://{bucket}/scenes/a.tif",
        f"s3://{bucket}/scenes/b.tif",
    ]
    items = plan_items(found, ObjectPath(f"s3://{bucket}/out"))
    assert [i.output for i in items] == [f"s3://{bucket}/out/a.zarr", f"s3://{bucket}/out/b.zarr"]
    globbed = collect_inputs(f"s3://{bucket}/scenes/b*.tif")
    assert [str(p) for _, p in globbed] == [f"s3://{bucket}/scenes/b.tif"]


def test_cog_export_to_s3(tmp_path, s3):
    bucket = s3.new_bucket()
    scene = _scene(tmp_path, (64, 96))
    store = tmp_path / "o.zarr"
    assert segment(scene, _model(), store, **OPTIONS).status == "complete"
    result = subprocess.run(
        [SEGFLOW, "export", f"s3://{bucket}/o.zarr", "--to", "cog", "-o", f"s3://{bucket}/o.tif"],
        env=s3.process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1  # the store is not in the bucket: one line
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    result = subprocess.run(
        [SEGFLOW, "export", str(store), "--to", "cog", "-o", f"s3://{bucket}/out/o.tif"],
        env=s3.process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    local = tmp_path / "back.tif"
    _fs(s3).get_file(f"{bucket}/out/o.tif", str(local))
    with rasterio.open(local) as ds:
        assert ds.driver == "GTiff" and ds.overviews(1) is not None
        labels = ds.read(1)
    np.testing.assert_array_equal(labels, zarr.open_group(store, mode="r")["labels"][...])


def _cli(server: S3Server, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEGFLOW, "run", *args, *CLI_OPTIONS],
        env=server.process_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "case", ["wrong secret", "missing bucket", "missing object", "missing output bucket"]
)
def test_bad_storage_fails_in_one_line_with_nothing_complete_left(tmp_path, s3, case):
    bucket = s3.new_bucket()
    scene = _scene(tmp_path, (64, 64))
    fs = _fs(s3)
    fs.put_file(str(scene), f"{bucket}/scene.tif")
    model = save(_model(), tmp_path / "m.safetensors")
    source, output, env = f"s3://{bucket}/scene.tif", f"s3://{bucket}/o.zarr", {}
    if case == "wrong secret":
        env = {"AWS_SECRET_ACCESS_KEY": "not-the-secret-" + s3.secret[:6]}
    elif case == "missing bucket":
        source = "s3://no-such-bucket-segflow/scene.tif"
    elif case == "missing object":
        source = f"s3://{bucket}/nothing-here.tif"
    else:
        output = "s3://no-such-bucket-segflow/o.zarr"
    result = _cli(s3, source, "-m", str(model), "-o", output, **env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert s3.secret not in result.stderr + result.stdout
    assert s3.secret[:6] not in result.stderr  # not even the wrong one given
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/o.zarr/zarr.json")
    assert not fs.find(f"{bucket}/o.zarr")


def _done(fs: s3fs.S3FileSystem, store: str) -> list[str]:
    fs.invalidate_cache()
    return [k for k in fs.find(f"{store}/_segflow/done/c")]


@pytest.mark.slow
def test_a_killed_run_resumes_bit_identically_on_s3(tmp_path, s3):
    bucket = s3.new_bucket()
    fs = _fs(s3)
    scene = write_tif(tmp_path / "big.tif", textured((768, 768), 3), tile=256)
    fs.put_file(str(scene), f"{bucket}/in/big.tif")
    model = save(_model(), tmp_path / "m.safetensors")
    fs.put_file(str(model), f"{bucket}/models/m.safetensors")
    args = [f"s3://{bucket}/in/big.tif", "-m", f"s3://{bucket}/models/m.safetensors"]
    env = {"SEGFLOW_LEASE_SECONDS": "2", "SEGFLOW_HOME": str(tmp_path / "home")}
    reference = segment(
        scene, str(model), tmp_path / "ref.zarr", patch_size=64, chunk_size=64, device="cpu"
    )
    assert reference.status == "complete"

    store = f"{bucket}/out/big.zarr"
    process = subprocess.Popen(
        [SEGFLOW, "run", *args, "-o", f"s3://{store}", *CLI_OPTIONS, "--workers", "1"],
        env=s3.process_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if fs.exists(f"{store}/zarr.json") and _done(fs, store):
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    info = json.loads(fs.cat_file(f"{store}/zarr.json"))["attributes"]["segflow"]
    assert info["complete"] is False, "killed too late: the run had finished"
    assert 0 < len(_done(fs, store)) < 144

    # the killed run's lease is still there until it expires: a resume now is refused
    refused = _cli(s3, *args, "-o", f"s3://{store}", "--resume", **env)
    if refused.returncode != 0:
        assert "being written by another run" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        time.sleep(2.5)
        resumed = _cli(s3, *args, "-o", f"s3://{store}", "--resume", **env)
    else:
        resumed = refused  # the lease had expired already on a slow machine
    assert resumed.returncode == 0, resumed.stderr
    a, b = _arrays(tmp_path / "ref.zarr"), _arrays(f"s3://{store}")
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert not fs.exists(f"{bucket}/out/.big.zarr.lock")  # the finished run gave its lease back


@pytest.mark.slow
def test_a_local_cluster_of_two_processes_writes_the_same_bytes_to_s3(tmp_path, s3):
    bucket = s3.new_bucket()
    scene = write_tif(tmp_path / "scene.tif", textured((256, 320), 3), tile=None)
    _fs(s3).put_file(str(scene), f"{bucket}/scene.tif")
    model = save(_model(), tmp_path / "m.safetensors")  # workers load it from the file
    local = segment(scene, str(model), tmp_path / "local.zarr", **OPTIONS)
    clustered = segment(
        f"s3://{bucket}/scene.tif",
        str(model),
        f"s3://{bucket}/o.zarr",
        scheduler="local",
        workers=2,
        **OPTIONS,
    )
    assert local.status == clustered.status == "complete", clustered.error
    a, b = _arrays(tmp_path / "local.zarr"), _arrays(f"s3://{bucket}/o.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_a_nifti_volume_in_s3_reads_and_segments_as_the_local_file(tmp_path, s3, name):
    from segflow.io.open import open_source
    from tests.conftest import threshold_model, write_nifti

    bucket = s3.new_bucket()
    rng = np.random.default_rng(3)
    volume = rng.integers(0, 200, size=(40, 36, 28)).astype(np.int16)
    affine = np.array([[0, -0.8, 0, 10], [0, 0, 1.5, -5], [-0.8, 0, 0, 3], [0, 0, 0, 1.0]])
    path = write_nifti(tmp_path / name, volume, affine)
    _fs(s3).put_file(str(path), f"{bucket}/{name}")
    remote, local = open_source(f"s3://{bucket}/{name}"), open_source(path)
    assert remote.geometry == local.geometry and remote.spatial_shape == local.spatial_shape
    region = (slice(3, 31), slice(0, 36), slice(5, 20))
    np.testing.assert_array_equal(remote.read(region).data, local.read(region).data)
    model = threshold_model(100.0)
    options = {"patch_size": 16, "chunk_size": 16, "device": "cpu"}
    a = segment(path, model, tmp_path / "local.zarr", **options)
    b = segment(f"s3://{bucket}/{name}", model, f"s3://{bucket}/ct.zarr", **options)
    assert a.status == b.status == "complete", b.error
    np.testing.assert_array_equal(
        zarr.open_group(tmp_path / "local.zarr", mode="r")["0"][...],
        zarr.open_group(f"s3://{bucket}/ct.zarr", mode="r")["0"][...],
    )


def test_a_model_uri_in_a_spec_is_copied_to_the_cache(tmp_path, s3):
    bucket = s3.new_bucket()
    fs = _fs(s3)
    scene = _scene(tmp_path, (64, 96))
    model = save(_model(), tmp_path / "m.safetensors")
    fs.put_file(str(model), f"{bucket}/models/m.safetensors")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: s3://{bucket}/models/m.safetensors\ndevice: cpu\n")
    env = {"SEGFLOW_HOME": str(tmp_path / "home")}
    result = _cli(s3, str(scene), "--spec", str(spec), "-o", str(tmp_path / "o.zarr"), **env)
    assert result.returncode == 0, result.stderr
    reference = segment(scene, str(model), tmp_path / "ref.zarr", **OPTIONS)
    assert reference.status == "complete"
    a, b = _arrays(tmp_path / "ref.zarr"), _arrays(tmp_path / "o.zarr")
    np.testing.assert_array_equal(a["labels"], b["labels"])
    cached = list((tmp_path / "home" / "objects").glob("*/m.safetensors"))
    assert len(cached) == 1 and cached[0].read_bytes() == model.read_bytes()

    spec.write_text(f"model: s3://{bucket}/models/gone.safetensors\n")
    missing = _cli(s3, str(scene), "--spec", str(spec), "-o", str(tmp_path / "x.zarr"), **env)
    assert missing.returncode == 1 and "gone.safetensors" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    assert not (tmp_path / "x.zarr").exists()
