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


def _study_with_a_refused_series(study: Path):
    """One folder: a good series, one with a duplicate slice position, one missing a slice."""
    from dataclasses import replace

    import pydicom

    from tests.io.dicom_fixtures import SeriesSpec, coded_volume, oriented, write_series

    spec = SeriesSpec(coded_volume((6, 5, 4)), oriented("axial", (1.0, 1.0, 2.0)))
    write_series(study, replace(spec, series_uid="1.2.3.100", series_number=1))
    for uid, number, moved, to in (("1.2.3.200", 2, 3, 2.0), ("1.2.3.300", 3, 1, 4.0)):
        series = replace(spec, series_uid=uid, series_number=number)
        for path in write_series(study, series, seed=number):  # seeds: other file names
            ds = pydicom.dcmread(path)
            if spec.volume.shape[2] - int(ds.InstanceNumber) == moved:  # fixtures count back
                ds.ImagePositionPatient = [f"{v:.6f}" for v in spec.geometry.position(to)]
                ds.save_as(path)
    return spec


def test_a_refused_series_fails_alone_while_its_study_completes(prefect_server, models, tmp_path):
    """Duplicate positions and a missing slice: failed scans with one line each; the rest done."""
    study = tmp_path / "study"
    spec = _study_with_a_refused_series(study)
    state, report = run(str(study), tmp_path / "out", models["threshold3d"], export_nifti=True)
    assert state.is_failed() and "2 of 3 scans failed" in state.message
    assert report.exit_code == 3
    by_number = {s.scan.split("_")[1]: s for s in report.scans}  # <patient>_CT<number>_<uid>
    good, duplicate, missing = (by_number[f"CT{n}"] for n in (1, 2, 3))
    assert good.status == "complete" and good.reason is None
    mask = np.asarray(nib.load(good.nifti).dataobj)
    np.testing.assert_array_equal(mask, (spec.volume > 100).astype(np.uint8))
    assert good.voxels["class1"] == int((spec.volume > 100).sum())
    for scan, why in ((duplicate, "duplicate slice position"), (missing, "1 missing slice(s)")):
        assert scan.status == "failed" and scan.nifti is None
        assert why in scan.reason and "\n" not in scan.reason
        assert not Path(scan.output).exists()  # refused before a store was made


def test_dicom_seg_beside_each_series_store(prefect_server, models, tmp_path):
    """export_seg: <name>_seg.dcm per DICOM series, referencing it, frames equal to the mask;
    a NIfTI scan in the same batch has none; a re-run keeps the SEG of a finished scan."""
    import highdicom as hd
    import pydicom

    from tests.io.dicom_fixtures import SeriesSpec, coded_volume, oriented, write_series

    study = tmp_path / "study"
    volume = coded_volume((6, 5, 4)) + 600  # class 1 in three slices of four
    spec = SeriesSpec(volume, oriented("sagittal", (1.0, 1.0, 2.0)))
    files = write_series(study / "s1", spec)
    write_scan(study / "extra.nii.gz", seed=1, spacing=SPACING)
    out = tmp_path / "out"
    state, report = run(str(study), out, models["threshold3d"], export_seg=True)
    assert state.is_completed(), state.message
    by_kind = {s.input.endswith(".nii.gz"): s for s in report.scans}
    nifti_scan, series_scan = by_kind[True], by_kind[False]
    assert nifti_scan.status == "complete" and nifti_scan.seg is None
    assert series_scan.status == "complete"
    seg_path = Path(series_scan.seg)
    assert seg_path == out / f"{series_scan.scan}_seg.dcm" and seg_path.is_file()
    seg = hd.seg.segread(seg_path)
    assert seg.SeriesInstanceUID != spec.series_uid
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == spec.series_uid
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == {
        str(pydicom.dcmread(f).SOPInstanceUID) for f in files
    }
    assert seg.PatientID == "SEGFLOW-TEST-1"
    # frame by frame: the mask of each source slice, at that slice's position
    expected = (spec.volume > 100).astype(np.uint8)
    by_position = {
        tuple(np.round(spec.geometry.position(k), 3)): expected[:, :, k].T for k in range(4)
    }
    frames, seen = seg.pixel_array.reshape(-1, 5, 6), set()  # (frames, rows j, columns i)
    for n, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = tuple(
            np.round([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient], 3)
        )
        np.testing.assert_array_equal(frames[n], by_position[position])
        seen.add(position)
    # highdicom leaves out empty frames only
    labelled = {position for position, m in by_position.items() if m.any()}
    assert len(labelled) == 3 and labelled <= seen
    report_row = json.loads(Path(report.report_json).read_text())["scans"]
    assert {r["seg"] for r in report_row} == {str(seg_path), None}
    # a re-run: both scans finished, the SEG is reported again, not rewritten
    written = seg_path.stat().st_mtime_ns
    _, again = run(str(study), out, models["threshold3d"], export_seg=True)
    assert [s.status for s in again.scans] == ["skipped", "skipped"]
    assert {s.seg for s in again.scans} == {str(seg_path), None}
    assert seg_path.stat().st_mtime_ns == written


def test_fractional_dicom_seg_from_the_stored_probabilities(prefect_server, models, tmp_path):
    """seg_fractional: the SEG holds class 1's stored probability on each source slice;
    without stored probabilities the flow refuses before any scan is segmented."""
    import highdicom as hd

    from segflow.io.dicom import DicomSeriesSource
    from segflow.io.zarr_sink import ZarrSink
    from tests.io.dicom_fixtures import SeriesSpec, coded_volume, oriented, write_series

    study = tmp_path / "study"
    spec = SeriesSpec(coded_volume((6, 5, 4)) + 600, oriented("axial", (1.0, 1.0, 2.0)))
    write_series(study / "s1", spec)
    refused, _ = run(str(study), tmp_path / "none", models["threshold3d"], seg_fractional=True)
    assert refused.is_failed() and "--probabilities uint8" in refused.message
    assert not (tmp_path / "none").exists()
    out = tmp_path / "out"
    state = hospital_batch(
        str(study),
        str(out),
        model=str(models["threshold3d"]),
        options={**OPTIONS, "probabilities": "uint8"},
        seg_fractional=True,
        return_state=True,
    )
    assert state.is_completed(), state.message
    [scan] = outcome(state).scans
    seg = hd.seg.segread(scan.seg)
    assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == 254
    uids = [s.sop_uid for s in DicomSeriesSource(study / "s1").slices]
    frames = seg.get_pixels_by_source_instance(
        uids, combine_segments=False, rescale_fractional=True, assert_missing_frames_are_empty=True
    )
    stored = ZarrSink.open(scan.output).read_probabilities()[1:]
    np.testing.assert_allclose(frames, stored.transpose(3, 2, 1, 0), rtol=0, atol=1e-6)
