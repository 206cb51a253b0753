"""Flow tests: one Prefect test server per session, model FILES, small real inputs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segflow.models import new_model, save_model

from ..conftest import pixel_model, textured, threshold_model, write_tif

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session", autouse=True)
def segflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A SEGFLOW_HOME of the session's own: a server the user started is never used here."""
    home = tmp_path_factory.mktemp("segflow-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGFLOW_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model files: 'rgb' (3 bands -> 3 classes, pointwise), 'bands4' (4 bands -> 4 classes),
    'unet' (a tiny 2-D U-Net, spatial context), 'threshold3d' (1 channel, 2 classes, 3-D)."""
    root = tmp_path_factory.mktemp("models")
    files = {}
    eye3 = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    eye4 = [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]
    for name, loaded in (
        ("rgb", pixel_model(eye3, [0.0, 0.0, 0.0])),
        ("bands4", pixel_model(eye4, [0.0, 0.0, 0.0, 0.0])),
        ("threshold3d", threshold_model(100.0, spatial_dims=3)),
    ):
        files[name] = root / f"{name}.safetensors"
        save_model(loaded.module, loaded.meta, files[name])
    import torch

    torch.manual_seed(0)
    module, meta = new_model("unet2d", in_channels=3, classes=3, depth=2, base_channels=4)
    files["unet"] = root / "unet.safetensors"
    save_model(module, meta, files["unet"])
    return files


def write_scene(
    path: Path, size: tuple[int, int] = (192, 160), seed: int = 0, bands: int = 3
) -> Path:
    """A tiled GeoTIFF in EPSG:32618 with 30 m pixels (900 m² each)."""
    return write_tif(path, textured(size, bands, seed=seed), tile=None)


def write_scan(
    path: Path, shape: tuple[int, int, int] = (40, 36, 28), seed: int = 0, spacing: float = 1.5
) -> tuple[Path, np.ndarray]:
    """A float32 NIfTI with a bright ball (values 0..200); returns the path and the data."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = [n / 2 + rng.uniform(-3, 3) for n in shape]
    radius = min(shape) / 3
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    data = np.where(dist < radius, 180.0, 20.0) + rng.normal(0, 5, size=shape)
    data = data.astype(np.float32)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-30.0, -20.0, 10.0]
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)
    return path, data


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file short, like an interrupted copy."""
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path
