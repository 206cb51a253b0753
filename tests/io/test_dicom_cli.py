"""The DICOM commands, on a Typer app of their own (cli/main.py mounts them for real)."""

from __future__ import annotations

from dataclasses import replace

import highdicom as hd
import pytest
import typer
from typer.testing import CliRunner

from segflow import segment
from segflow.cli.dicom import export_dicom_seg_command, register
from segflow.errors import ConfigError
from tests.conftest import threshold_model
from tests.io.dicom_fixtures import SeriesSpec, coded_volume, oriented, write_series


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: Typer keeps the command names
    return app


def test_dicom_series_lists_each_series_and_the_skipped_files(tmp_path, app):
    spec = SeriesSpec(coded_volume((5, 4, 3)), oriented("axial", (1.0, 1.0, 2.0)))
    write_series(tmp_path, spec)
    write_series(tmp_path, replace(spec, series_uid="1.2.3.9", description="second"), seed=2)
    (tmp_path / "notes.txt").write_text("x")
    result = CliRunner().invoke(app, ["dicom-series", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "1.2.3.9" in result.output and spec.series_uid in result.output
    assert "skipped notes.txt: not a DICOM file" in result.output


def test_export_dicom_seg_command_writes_the_seg(tmp_path):
    spec = SeriesSpec(coded_volume((5, 4, 3)), oriented("coronal", (1.0, 1.0, 2.0)))
    files = write_series(tmp_path / "s", spec)
    segment(files[0], threshold_model(0.0), tmp_path / "o.zarr", device="cpu")
    with pytest.raises(ConfigError, match="needs --source"):
        export_dicom_seg_command(tmp_path / "o.zarr", tmp_path / "x.dcm", None, None, False)
    export_dicom_seg_command(tmp_path / "o.zarr", tmp_path / "seg.dcm", tmp_path / "s", None, False)
    assert hd.seg.segread(tmp_path / "seg.dcm").SeriesInstanceUID


def test_export_dicom_seg_through_the_command_and_a_folder_as_one_input(tmp_path):
    """A series folder is one input to segment(); `segflow export --to dicom-seg` writes its SEG."""
    from segflow.cli.main import app as segflow_app

    spec = SeriesSpec(coded_volume((5, 4, 3)), oriented("axial", (1.0, 1.0, 2.0)))
    write_series(tmp_path / "series", spec)
    result = segment(tmp_path / "series", threshold_model(0.0), tmp_path / "ct.zarr", device="cpu")
    assert not isinstance(result, list) and result.status == "complete"
    args = ["export", str(tmp_path / "ct.zarr"), "--to", "dicom-seg"]
    run = CliRunner().invoke(segflow_app, [*args, "--source", str(tmp_path / "series")])
    assert run.exit_code == 0, run.output
    assert hd.seg.segread(tmp_path / "ct_seg.dcm").SeriesInstanceUID


def test_segflow_run_picks_a_series_from_a_folder_of_several(tmp_path):
    """`--series UID` chooses; without it the one-line error lists the series."""
    from segflow.cli.main import app as segflow_app
    from tests.conftest import save

    spec = SeriesSpec(coded_volume((5, 4, 3)), oriented("axial", (1.0, 1.0, 2.0)))
    write_series(tmp_path / "study", spec)
    write_series(tmp_path / "study", replace(spec, series_uid="1.2.3.9", description="b"), seed=2)
    model = save(threshold_model(0.0), tmp_path / "m.safetensors")
    args = ["run", str(tmp_path / "study"), "-m", str(model), "--no-flow", "--device", "cpu"]
    refused = CliRunner().invoke(segflow_app, [*args, "-o", str(tmp_path / "a.zarr")])
    assert refused.exit_code == 1 and "1.2.3.9" in refused.output
    chosen = CliRunner().invoke(
        segflow_app, [*args, "-o", str(tmp_path / "b.zarr"), "--series", "1.2.3.9"]
    )
    assert chosen.exit_code == 0, chosen.output
    assert (tmp_path / "b.zarr").is_dir()
    bad = CliRunner().invoke(segflow_app, [*args, "-o", str(tmp_path / "c.zarr"), "--series", "x"])
    assert bad.exit_code == 1 and "SeriesInstanceUID" in bad.output


def test_export_fractional_dicom_seg_through_the_command(tmp_path):
    from segflow.cli.main import app as segflow_app

    spec = SeriesSpec(coded_volume((6, 5, 4)), oriented("coronal", (1.0, 1.0, 2.0)))
    write_series(tmp_path / "series", spec)
    store = tmp_path / "ct.zarr"
    result = segment(
        tmp_path / "series", threshold_model(0.0), store, device="cpu", probabilities="float16"
    )
    assert result.status == "complete", result.error
    args = ["export", str(store), "--to", "dicom-seg", "--source", str(tmp_path / "series")]
    run = CliRunner().invoke(segflow_app, [*args, "--fractional"])
    assert run.exit_code == 0, run.output
    seg = hd.seg.segread(tmp_path / "ct_seg.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == 255
