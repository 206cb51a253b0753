"""Patch sampling: windowed reads only, grid checks, nodata / ignore masking, balancing, pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rasterio.transform import from_origin

from segflow.errors import ConfigError
from segflow.io.source import ReadResult, Region, Source
from segflow.train.sampling import (
    OpenPair,
    PatchSampler,
    TrainPair,
    check_same_grid,
    find_pairs,
    open_pair,
    read_patch,
    split_holdout,
    tile_regions,
)

from ..conftest import write_nifti, write_tif

TRANSFORM = from_origin(500000.0, 4000000.0, 10.0, 10.0)


class RecordingSource:
    """A real source that records the shape of every region read from it."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.reads: list[tuple[int, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(self, region: Region) -> ReadResult:
        self.reads.append(tuple(s.stop - s.start for s in region))
        return self.inner.read(region)


def _pair(tmp_path: Path, image: np.ndarray, mask: np.ndarray, **kw: Any) -> TrainPair:
    img = write_tif(tmp_path / "scene.tif", image, transform=TRANSFORM, **kw)
    msk = write_tif(tmp_path / "scene_mask.tif", mask[None], transform=TRANSFORM, nodata=255)
    return TrainPair(img, msk)


def _coded_scene(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Image band 1 = row, band 2 = column (+1, so 0 can be nodata); mask from them."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    image = np.stack([rows + 1, cols + 1]).astype(np.uint16)
    mask = ((rows // 16 + cols // 16) % 3).astype(np.uint8)
    return image, mask


def test_sampling_reads_windows_only_and_patches_are_aligned(tmp_path: Path) -> None:
    image, mask = _coded_scene(1024, 1024)
    opened = open_pair(_pair(tmp_path, image, mask))
    img_spy, mask_spy = RecordingSource(opened.image), RecordingSource(opened.mask)
    pair = OpenPair(img_spy, mask_spy)  # type: ignore[arg-type]
    sampler = PatchSampler([pair], 64, 3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = sampler.sample(rng)
        assert s.image.shape == (2, 64, 64) and s.mask.shape == (64, 64)
        r0, c0 = int(s.image[0, 0, 0]) - 1, int(s.image[1, 0, 0]) - 1
        np.testing.assert_array_equal(s.mask, mask[r0 : r0 + 64, c0 : c0 + 64])
    assert img_spy.reads and mask_spy.reads
    assert all(r == (64, 64) for r in img_spy.reads + mask_spy.reads)  # never the whole scene


def test_balanced_sampling_finds_a_rare_class(tmp_path: Path) -> None:
    image, _ = _coded_scene(512, 512)
    mask = np.zeros((512, 512), dtype=np.uint8)
    mask[400:420, 100:120] = 1  # 0.15 % of the scene
    pair = open_pair(_pair(tmp_path, image, mask))
    plain = PatchSampler([pair], 32, 2)
    balanced = PatchSampler([pair], 32, 2, balance=True, balance_tries=30)
    rng = np.random.default_rng(3)
    hits_plain = sum(bool((plain.sample(rng).mask == 1).any()) for _ in range(60))
    hits_balanced = sum(bool((balanced.sample(rng).mask == 1).any()) for _ in range(60))
    assert hits_balanced > 3 * max(hits_plain, 1)


def test_nodata_and_mask_nodata_become_the_ignore_index(tmp_path: Path) -> None:
    image, mask = _coded_scene(64, 64)
    image[:, :, :8] = 0  # image nodata in the first 8 columns
    mask[:4, :] = 255  # unlabeled (mask nodata) in the first 4 rows
    pair = open_pair(_pair(tmp_path, image, mask, nodata=0))
    s = read_patch(pair, (slice(0, 64), slice(0, 64)), (64, 64), num_classes=3, ignore_index=99)
    assert (s.mask[:, :8] == 99).all() and (s.mask[:4] == 99).all()
    np.testing.assert_array_equal(s.mask[4:, 8:], mask[4:, 8:])
    assert not s.valid[:, :8].any() and s.valid[:, 8:].all()


def test_unknown_class_ids_are_a_one_line_error(tmp_path: Path) -> None:
    image, mask = _coded_scene(32, 32)
    mask[5, 5] = 7
    pair = open_pair(_pair(tmp_path, image, mask))
    with pytest.raises(ConfigError, match="class id 7") as info:
        read_patch(pair, (slice(0, 32), slice(0, 32)), (32, 32), num_classes=3, ignore_index=255)
    assert "\n" not in str(info.value)


def test_small_inputs_are_padded_with_ignore(tmp_path: Path) -> None:
    image, mask = _coded_scene(20, 30)
    pair = open_pair(_pair(tmp_path, image, mask))
    s = PatchSampler([pair], 32, 3, ignore_index=255).sample(np.random.default_rng(0))
    assert s.image.shape == (2, 32, 32)
    assert (s.mask[20:] == 255).all() and (s.mask[:, 30:] == 255).all()
    assert not s.valid[20:].any()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"transform": from_origin(500010.0, 4000000.0, 10.0, 10.0)}, "different geotransforms"),
        ({"crs": "EPSG:4326"}, "different CRSs"),
        ({"shape": (40, 32)}, "same grid"),
    ],
)
def test_grids_must_match(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    image, _ = _coded_scene(32, 32)
    img = write_tif(tmp_path / "a.tif", image, transform=TRANSFORM, crs="EPSG:32633")
    shape = change.get("shape", (32, 32))
    m = np.zeros((1, *shape), dtype=np.uint8)
    msk = write_tif(
        tmp_path / "a_mask.tif", m,
        transform=change.get("transform", TRANSFORM), crs=change.get("crs", "EPSG:32633"),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=message) as info:
        open_pair(TrainPair(img, msk))
    assert "\n" not in str(info.value)


def test_nifti_pairs_and_orientation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(12, 10, 8)).astype(np.uint8)
    image = (labels * 100 + 5).astype(np.int16)
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    lps = ras.copy()
    lps[0, 0] = lps[1, 1] = -2.0
    img = write_nifti(tmp_path / "ct.nii.gz", image, lps)
    lab = write_nifti(tmp_path / "ct_label.nii.gz", labels, lps)
    pair = open_pair(TrainPair(img, lab), orientation="RAS")
    s = read_patch(
        pair,
        (slice(0, 12), slice(0, 10), slice(0, 8)),
        (12, 10, 8),
        num_classes=3,
        ignore_index=255,
    )
    np.testing.assert_array_equal(s.mask, labels[::-1, ::-1, :])  # L->R and P->A flips
    np.testing.assert_array_equal(s.image[0], image[::-1, ::-1, :])
    other = write_nifti(tmp_path / "moved_label.nii.gz", labels, ras @ np.diag([1, 1, 1.5, 1]))
    with pytest.raises(ConfigError, match="different affines"):
        open_pair(TrainPair(img, other))


def test_slices_of_a_volume(tmp_path: Path) -> None:
    labels = np.zeros((16, 16, 6), dtype=np.uint8)
    labels[4:12, 4:12, :] = 1
    img = write_nifti(tmp_path / "v.nii", (labels * 50).astype(np.int16), np.eye(4))
    lab = write_nifti(tmp_path / "v_seg.nii", labels, np.eye(4))
    sampler = PatchSampler([open_pair(TrainPair(img, lab))], (16, 16, 1), 2)
    s = sampler.sample(np.random.default_rng(0))
    assert s.image.shape == (1, 16, 16, 1)
    assert len(sampler.tiles()) == 6  # one tile per slice


def test_find_pairs_in_folders(tmp_path: Path) -> None:
    image, mask = _coded_scene(16, 16)
    for name in ("a", "b"):
        write_tif(tmp_path / f"{name}.tif", image)
        write_tif(tmp_path / f"{name}_truth.tif", mask[None])
    pairs = find_pairs([tmp_path], [tmp_path])
    assert [(p.image.name, p.mask.name) for p in pairs] == [
        ("a.tif", "a_truth.tif"),
        ("b.tif", "b_truth.tif"),
    ]
    write_tif(tmp_path / "c.tif", image)
    with pytest.raises(ConfigError, match=r"no mask found for c\.tif"):
        find_pairs([tmp_path], [tmp_path])
    with pytest.raises(ConfigError, match="2 images but 1 masks"):
        find_pairs([tmp_path / "a.tif", tmp_path / "b.tif"], [tmp_path / "a_truth.tif"])


def test_holdout_split_and_tiles(tmp_path: Path) -> None:
    image, mask = _coded_scene(100, 40)
    pair = open_pair(_pair(tmp_path, image, mask))
    train, val = split_holdout(pair, 0.2)
    assert train.extent() == (slice(0, 80), slice(0, 40))
    assert val.extent() == (slice(80, 100), slice(0, 40))
    rng = np.random.default_rng(0)
    sampler = PatchSampler([train], 32, 3)
    for _ in range(30):
        s = sampler.sample(rng)
        assert int(s.image[0].max()) <= 80  # rows 0..79 only (values are row + 1)
    tiles = tile_regions(val.extent(), (32, 32))
    assert tiles == [(slice(80, 100), slice(0, 32)), (slice(80, 100), slice(32, 40))]


def test_check_same_grid_accepts_plain_label_tiffs(tmp_path: Path) -> None:
    image, mask = _coded_scene(32, 32)
    img = write_tif(tmp_path / "a.tif", image, transform=TRANSFORM)
    plain = write_tif(tmp_path / "a_mask.tif", mask[None], crs=None)
    with pytest.warns(UserWarning):
        pair = open_pair(TrainPair(img, plain))
    check_same_grid(pair.image, pair.mask)
