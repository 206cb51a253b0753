"""Shared test helpers: real GeoTIFF/NIfTI files written in code, tiny deterministic models."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from segflow.models import LoadedModel
from segflow.models.meta import ClassInfo, ModelMeta, Normalization
from segflow.models.pixel import PixelClassifier

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32618",
    transform: object | None = None,
    nodata: float | None = None,
    tile: int | None = 256,
) -> Path:
    """Write ``(C, H, W)`` as a GeoTIFF (tiled when the image allows it)."""
    count, height, width = data.shape
    profile: dict[str, object] = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=str(data.dtype),
    )
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or from_origin(300000.0, 4500000.0, 30.0, 30.0)
    if nodata is not None:
        profile["nodata"] = nodata
    if tile and height >= tile and width >= tile:
        profile.update(tiled=True, blockxsize=tile, blockysize=tile)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)
    return path


def textured(
    shape: Sequence[int], channels: int = 3, seed: int = 0, dtype: str = "uint8"
) -> np.ndarray:
    """Smooth blobs plus noise: structure a model can segment, values in 0..255."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    base = sum(np.sin(g / (7.0 + 3 * i)) for i, g in enumerate(grids))
    out = [
        (base * 40 + 128 + rng.normal(0, 20, size=tuple(shape)) + 15 * c).clip(0, 255)
        for c in range(channels)
    ]
    return np.stack(out).astype(dtype)


def pixel_model(
    weight: Sequence[Sequence[float]],
    bias: Sequence[float],
    *,
    spatial_dims: int = 2,
    normalization: Normalization | None = None,
    orientation: str | None = None,
) -> LoadedModel:
    """A fixed-weight pointwise model: logits[k] = sum_c weight[k][c] * x[c] + bias[k]."""
    w = torch.tensor(weight, dtype=torch.float32)
    classes, channels = w.shape
    module = PixelClassifier(channels, classes, spatial_dims=spatial_dims)
    conv = module.net[0]
    with torch.no_grad():
        conv.weight.copy_(w.reshape(classes, channels, *([1] * spatial_dims)))
        conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    meta = ModelMeta(
        arch="pixel",
        arch_kwargs={"hidden": [], "spatial_dims": spatial_dims},
        spatial_dims=spatial_dims,
        in_channels=channels,
        classes=tuple(ClassInfo(name=f"class{i}") for i in range(classes)),
        normalization=normalization,
        output_stride=1,
        orientation=orientation,
    )
    return LoadedModel(
        meta=meta,
        module=module.eval(),
        sha256=f"pixel-{hash((str(weight), str(bias)))}",
        path=None,
        runtime="torch",
    )


def threshold_model(
    threshold: float, *, spatial_dims: int = 3, orientation: str | None = None
) -> LoadedModel:
    """Two classes; class 1 wins exactly where the voxel value exceeds ``threshold``."""
    return pixel_model(
        [[0.0], [1.0]], [0.0, -threshold], spatial_dims=spatial_dims, orientation=orientation
    )


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("shared sample data not present")
    return SHARED_DATA


def save(model: LoadedModel, path: Path) -> Path:
    """Write an in-memory test model to a real segflow model file."""
    from segflow.models import save_model

    save_model(model.module, model.meta, path)
    return path


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A temporary Prefect server for the whole session (~8 s once); yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@contextmanager
def two_worker_client() -> Iterator[Any]:
    """A ``distributed.Client`` of a real two-process LocalCluster on loopback."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
