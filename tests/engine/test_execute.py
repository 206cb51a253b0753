"""execute(): progress under the local schedulers moves patch by patch, not region by region."""

from __future__ import annotations

import pytest

from segflow import segment
from tests.conftest import pixel_model, textured, write_tif


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_progress_of_one_region_moves_before_it_ends_and_ends_full(tmp_path, scheduler):
    path = write_tif(tmp_path / "in.tif", textured((200, 180), 1, seed=3), tile=None)
    seen: list[tuple[int, int]] = []
    segment(
        path,
        pixel_model([[1.0], [-1.0]], [0.0, 0.5]),
        tmp_path / "out.zarr",
        patch_size=32,
        overlap=0.25,
        batch_size=4,
        scheduler=scheduler,
        device="cpu",
        progress=lambda done, total: seen.append((done, total)),
    )
    total = seen[-1][1]
    assert seen[-1] == (total, total)
    # one region of many patches: the bar passes through values between 0 and the end
    assert any(0 < done < total for done, _ in seen)
    done_values = [done for done, t in seen if t == total]
    assert done_values == sorted(done_values)  # never goes back


def test_patches_all_nodata_still_count_once_their_region_ends(tmp_path):
    import numpy as np

    image = textured((128, 128), 1, seed=1).astype("float32")
    image[:, :64] = np.nan  # the left half's patches are skipped, never blended
    path = write_tif(tmp_path / "in.tif", image, tile=None)
    seen: list[tuple[int, int]] = []
    segment(
        path,
        pixel_model([[1.0], [-1.0]], [0.0, 0.5]),
        tmp_path / "out.zarr",
        patch_size=32,
        overlap=0.0,
        device="cpu",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1][0] == seen[-1][1] > 0
