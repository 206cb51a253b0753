"""The shipped pipeline specs drive real flow runs (bundled models: skipped until trained)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from flows.hospital import hospital_batch
from flows.segment import segment_batch
from segflow.models import new_model, save_model
from segflow.spec import load_spec

from .conftest import write_scan

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def bundled(spec_name: str) -> Path:
    spec = load_spec(PIPELINES / spec_name)
    assert spec.model is not None
    if not spec.model.is_file():
        pytest.skip(f"{spec.model.name} is not built yet (scripts/train_bundled.sh)")
    return PIPELINES / spec_name


def test_demo_spec_on_the_sample_scene(prefect_server, tmp_path):
    spec = bundled("demo.yaml")
    from segflow.samples import write_samples

    samples = write_samples(tmp_path / "data", size="small")
    state = segment_batch(
        str(samples["landcover_image"]),
        str(tmp_path / "out"),
        spec=str(spec),
        options={"device": "cpu"},
        return_state=True,
    )
    assert state.is_completed(), state.message
    [item] = state.result().items
    assert item.status == "complete" and item.stats["valid_pixels"] > 0


def test_ct_organs_spec_with_nifti_masks(prefect_server, tmp_path):
    spec = bundled("ct-organs.yaml")
    from segflow.samples import write_samples

    samples = write_samples(tmp_path / "data", size="small")
    state = hospital_batch(
        [str(samples["phantom_image"])],
        str(tmp_path / "out"),
        spec=str(spec),
        options={"device": "cpu"},
        return_state=True,
    )
    assert state.is_completed(), state.message
    [scan] = state.result().scans
    assert scan.nifti and Path(scan.nifti).is_file()
    assert sum(scan.volumes_ml.values()) > 0


def test_brain_mri_spec_runs_with_a_model_beside_it(prefect_server, tmp_path):
    """The spec ships without a model: place one where it points, as its comment says."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    shutil.copy(PIPELINES / "brain-mri.yaml", folder)
    torch.manual_seed(0)
    module, meta = new_model(
        "unet3d",
        in_channels=1,
        classes=["background", "csf", "gm", "wm"],
        depth=2,
        base_channels=4,
        orientation="RAS",
    )
    save_model(module, meta, folder / "models" / "brain-mri-unet3d.safetensors")
    scan, _ = write_scan(tmp_path / "t1.nii.gz", shape=(24, 20, 16))
    state = hospital_batch(
        str(scan),
        str(tmp_path / "out"),
        spec=str(folder / "brain-mri.yaml"),
        options={"device": "cpu", "patch_size": [16, 16, 16], "tta": False},
        return_state=True,
    )
    assert state.is_completed(), state.message
    [report] = state.result().scans
    assert report.status == "complete" and Path(report.nifti).is_file()
    assert set(report.volumes_ml) == {"background", "csf", "gm", "wm"}
    assert sum(report.voxels.values()) == 24 * 20 * 16
