"""Hospital scan batches: per-scan isolation, volumes in mL, NIfTI masks, reports, exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from flows.hospital import ScanReport, exit_code, hospital_batch
from flows.report import outcome

from .conftest import truncate, write_scan

OPTIONS = {"device": "cpu"}
SPACING = 1.5
VOXEL_ML = SPACING**3 / 1000.0


@pytest.fixture
def batch(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Five scans written with nibabel; scan_3 is a truncated .nii.gz."""
    folder = tmp_path / "scans"
    folder.mkdir()
    data = {}
    for i in range(5):
        _, values = write_scan(folder / f"scan_{i}.nii.gz", seed=i, spacing=SPACING)
        data[f"scan_{i}"] = values
    truncate(folder / "scan_3.nii.gz", keep=0.4)
    return folder, data


def run(scans, out: Path, model: Path, **kw):
    state = hospital_batch(
        scans, str(out), model=str(model), options=OPTIONS, return_state=True, **kw
    )
    return state, outcome(state)


def test_five_scans_one_corrupt(prefect_server, models, batch, tmp_path):
    folder, data = batch
    out = tmp_path / "out"
    state, report = run(str(folder), out, models["threshold3d"])
    assert state.is_failed() and "1 of 5 scans failed" in state.message
    by_scan = {s.scan: s for s in report.scans}
    assert [by_scan[f"scan_{i}"].status for i in range(5)] == [
        "complete",
        "complete",
        "complete",
        "failed",
        "complete",
    ]
    bad = by_scan["scan_3"]
    assert "scan_3.nii.gz" in bad.reason and bad.reason.count("\n") == 0
    assert report.exit_code == 3 and exit_code(report.scans) == 3
    for i in (0, 1, 2, 4):
        scan = by_scan[f"scan_{i}"]
        assert (out / f"scan_{i}.zarr").is_dir() and Path(scan.output).name == f"scan_{i}.zarr"
        inside = int((data[f"scan_{i}"] > 100).sum())  # the threshold model's class 1
        assert scan.voxels["class1"] == inside
        assert scan.volumes_ml["class1"] == pytest.approx(inside * VOXEL_ML, abs=1e-3)
        assert scan.voxel_ml == pytest.approx(VOXEL_ML)
    assert not (out / "scan_3.zarr").exists() or by_scan["scan_3"].status == "failed"
    # report files: CSV and JSON with reason, time and volumes
    with Path(report.report_csv).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["scan"] for r in rows] == [f"scan_{i}" for i in range(5)]
    assert rows[3]["status"] == "failed" and "scan_3" in rows[3]["reason"]
    assert float(rows[0]["class1_ml"]) == pytest.approx(
        by_scan["scan_0"].volumes_ml["class1"], rel=1e-5
    )
    assert float(rows[0]["seconds"]) > 0
    written = json.loads(Path(report.report_json).read_text())
    assert written["exit_code"] == 3 and written["counts"]["failed"] == 1


def test_rerun_skips_finished_scans_and_exports_masks(prefect_server, models, batch, tmp_path):
    folder, data = batch
    out = tmp_path / "out"
    run(str(folder), out, models["threshold3d"])
    # the corrupt scan is replaced by a good copy: the re-run does only that one
    (folder / "scan_3.nii.gz").unlink()
    _, data["scan_3"] = write_scan(folder / "scan_3.nii.gz", seed=3, spacing=SPACING)
    state, report = run(str(folder), out, models["threshold3d"], export_nifti=True)
    assert state.is_completed() and report.exit_code == 0
    assert [s.status for s in report.scans] == [
        "skipped",
        "skipped",
        "skipped",
        "complete",
        "skipped",
    ]
    for i in range(5):
        scan = report.scans[i]
        mask = nib.load(scan.nifti)
        source = nib.load(folder / f"scan_{i}.nii.gz")
        np.testing.assert_array_equal(mask.affine, source.affine)
        np.testing.assert_array_equal(
            np.asarray(mask.dataobj), (data[f"scan_{i}"] > 100).astype(np.uint8)
        )


def test_manifest_with_ids_and_a_missing_file(prefect_server, models, batch, tmp_path):
    manifest = tmp_path / "batch.csv"
    manifest.write_text("id,path\nP1,scans/scan_0.nii.gz\nP2,scans/nowhere.nii.gz\n")
    _, report = run(str(manifest), tmp_path / "out", models["threshold3d"])
    assert [(s.scan, s.status) for s in report.scans] == [("P1", "complete"), ("P2", "failed")]
    assert "nowhere.nii.gz" in report.scans[1].reason
    assert report.exit_code == 3


def test_all_failed_is_exit_code_1(prefect_server, models, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(2):
        (folder / f"bad_{i}.nii").write_bytes(b"not a nifti file at all")
    state, report = run(str(folder), tmp_path / "out", models["threshold3d"])
    assert report.exit_code == 1 and state.is_failed()


def test_exit_code_rules():
    def s(status: str) -> ScanReport:
        return ScanReport(scan="x", input="x", output="x", status=status)  # type: ignore[arg-type]

    assert exit_code([s("complete"), s("skipped")]) == 0
    assert exit_code([s("complete"), s("failed")]) == 3
    assert exit_code([s("failed")]) == 1


def test_a_pacs_folder_is_one_scan_per_dicom_series(prefect_server, models, tmp_path):
    """Two series of one study (and a report file): two scans, each with store and NIfTI mask."""
    from dataclasses import replace

    from tests.io.dicom_fixtures import SeriesSpec, coded_volume, oriented, write_series

    study = tmp_path / "study"
    spec = SeriesSpec(coded_volume((6, 5, 4)), oriented("axial", (1.0, 1.0, 2.0)))
    write_series(study / "s1", spec)
    write_series(study / "s2", replace(spec, series_uid="1.2.3.42", description="second"), seed=2)
    (study / "report.txt").write_text("dictated report")
    state, report = run(str(study), tmp_path / "out", models["threshold3d"], export_nifti=True)
    assert state.is_completed(), state.message
    assert [s.status for s in report.scans] == ["complete", "complete"]
    assert len({s.scan for s in report.scans}) == 2
    assert any("report.txt" in note for note in report.skipped_files)
    for scan in report.scans:
        mask = nib.load(scan.nifti)
        assert mask.shape == (6, 5, 4)
        expected = (coded_volume((6, 5, 4)) > 100).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)
