"""The flow commands (batch, landcover, hospital; serve is in test_deploy) through Typer."""

from __future__ import annotations

from pathlib import Path

import typer
import zarr
from typer.testing import CliRunner

from segflow.cli.flows import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, register, standalone_app

from .conftest import truncate, write_scan, write_scene

runner = CliRunner()
app = standalone_app()


def test_register_adds_the_flow_commands():
    main = typer.Typer()
    register(main)
    names = {c.name for c in main.registered_commands}
    assert names == {"batch", "landcover", "hospital", "serve"}
    assert {g.name for g in main.registered_groups} == {"server"}
    help_text = runner.invoke(main, ["--help"]).output
    assert all(name in help_text for name in [*names, "server"])
    server_help = runner.invoke(main, ["server", "--help"]).output
    assert all(name in server_help for name in ("start", "status", "stop"))


def test_server_status_and_stop_without_a_server():
    status = runner.invoke(app, ["server", "status"])
    assert status.exit_code == EXIT_ERROR and "segflow server start" in status.output
    stopped = runner.invoke(app, ["server", "stop"])
    assert stopped.exit_code == EXIT_OK and "no server" in stopped.output


def test_batch_reads_its_spec_once(prefect_server, models, tmp_path, monkeypatch):
    """The command resolves spec and flags into one pipeline; the flow gets it as parameters."""
    import segflow.spec

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_scene(scenes / "s0.tif")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {models['rgb']}\ndevice: cpu\noutputs:\n  chunk_size: 64\n")
    reads: list[object] = []
    real = segflow.spec.load_spec
    monkeypatch.setattr(segflow.spec, "load_spec", lambda p: reads.append(p) or real(p))
    result = runner.invoke(
        app, ["batch", str(scenes), "-o", str(tmp_path / "out"), "--spec", str(spec),
              "--chunk-size", "32"],
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert reads == [spec]
    labels = zarr.open_group(tmp_path / "out" / "s0.zarr", mode="r")["labels"]
    assert labels.chunks == (32, 32)  # the flag won over the spec


def test_hospital_command_partial_failure_exit_code(prefect_server, models, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(5):
        write_scan(scans / f"p{i}.nii.gz", seed=i)
    truncate(scans / "p2.nii.gz")
    result = runner.invoke(
        app,
        [
            "hospital",
            str(scans),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(models["threshold3d"]),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert result.output.count("done ") == 4
    assert "failed p2:" in result.output and "p2.nii.gz" in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "out" / "reports").is_dir()


def test_batch_command_exit_codes_and_resume(prefect_server, models, tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(2):
        write_scene(scenes / f"b{i}.tif", seed=i)
    args = [
        "batch",
        str(scenes),
        "-o",
        str(tmp_path / "out"),
        "--model",
        str(models["rgb"]),
        "--device",
        "cpu",
        "--chunk-size",
        "64",
    ]
    first = runner.invoke(app, [*args, "--report", str(tmp_path / "batch.json")])
    assert first.exit_code == EXIT_OK, first.output
    assert (tmp_path / "batch.json").is_file() and (tmp_path / "batch.csv").is_file()
    again = runner.invoke(app, args)  # outputs exist: every input fails, with the reason
    assert again.exit_code == EXIT_ERROR and "--resume" in again.output
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == EXIT_OK and resumed.output.count("up to date") == 2


def test_landcover_command_prints_areas(prefect_server, models, tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_scene(scenes / "l0.tif", seed=1)
    result = runner.invoke(
        app,
        [
            "landcover",
            str(scenes),
            str(tmp_path / "maps"),
            "--model",
            str(models["rgb"]),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == EXIT_OK, result.output
    assert "class0:" in result.output and " ha (" in result.output and "report:" in result.output


def test_usage_mistakes_are_one_line(prefect_server, models, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("tiling:\n  ovrlap: 0.5\n")
    result = runner.invoke(
        app,
        [
            "landcover",
            str(tmp_path),
            str(tmp_path / "maps"),
            "--spec",
            str(spec),
            "--model",
            str(models["rgb"]),
        ],
    )
    assert result.exit_code == EXIT_ERROR
    assert "did you mean 'overlap'" in result.output and "Traceback" not in result.output
    missing = runner.invoke(
        app,
        [
            "batch",
            str(tmp_path),
            "-o",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "nope.safetensors"),
        ],
    )
    assert missing.exit_code == EXIT_ERROR and "model file" in missing.output
    bad_cron = runner.invoke(
        app,
        [
            "serve",
            str(tmp_path),
            str(tmp_path / "maps"),
            "--model",
            str(models["rgb"]),
            "--cron",
            "whenever",
        ],
    )
    assert bad_cron.exit_code == EXIT_ERROR and "invalid schedule" in bad_cron.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(
        app,
        ["hospital", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--model",
         str(models["threshold3d"])],
    )  # fmt: skip
    assert empty.exit_code == EXIT_ERROR and "no inputs in" in empty.output
    assert "Traceback" not in empty.output


def test_hospital_command_runs_an_ensemble(prefect_server, models, tmp_path):
    """Repeated -m: one hospital-batch flow run whose stores are the members' mean."""
    from tests.conftest import save, threshold_model

    scans = tmp_path / "scans"
    scans.mkdir()
    write_scan(scans / "p0.nii.gz", seed=0)
    second = save(threshold_model(140.0), tmp_path / "threshold140.safetensors")
    args = ["hospital", str(scans), "-o", str(tmp_path / "out"), "--device", "cpu"]
    result = runner.invoke(app, [*args, "-m", str(models["threshold3d"]), "-m", str(second)])
    assert result.exit_code == EXIT_OK, result.output
    provenance = zarr.open_group(tmp_path / "out" / "p0.zarr", mode="r").attrs["segflow"]
    members = provenance["provenance"]["ensemble"]["members"]
    assert [Path(m["path"]).name for m in members] == ["threshold3d.safetensors", second.name]


def test_batch_runs_the_spec_ensemble_with_its_weights(prefect_server, tmp_path):
    """A spec naming a folder of folds and weights: the flow gets members and weights."""
    from segflow import segment
    from tests.conftest import pixel_model, save

    folds = tmp_path / "folds"
    folds.mkdir()
    eye = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    for k in range(2):
        save(pixel_model(eye, [0.4 * k, 0.0, -0.3 * k]), folds / f"fold{k}.safetensors")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_scene(scenes / "s0.tif")
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: folds\nweights: [1, 4]\ndevice: cpu\noutputs: {probabilities: uint8}\n")
    result = runner.invoke(app, ["batch", str(scenes), "-o", str(tmp_path / "out"),
                                 "--spec", str(spec)])  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    reference = segment(scenes / "s0.tif", sorted(folds.iterdir()), tmp_path / "lib.zarr",
                        weights=[1, 4], device="cpu", probabilities="uint8")  # fmt: skip
    assert not isinstance(reference, list)
    got = zarr.open_group(tmp_path / "out" / "s0.zarr", mode="r")
    want = zarr.open_group(tmp_path / "lib.zarr", mode="r")
    assert (got["probabilities"][...] == want["probabilities"][...]).all()
    assert got.attrs["segflow"]["provenance"]["ensemble"]["weights"] == [1.0, 4.0]
