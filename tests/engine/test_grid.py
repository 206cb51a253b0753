import itertools

import numpy as np
import pytest

from segflow.engine.grid import (
    axis_starts,
    chunk_grid_shape,
    chunk_region,
    coerce_overlap,
    intersect,
    iter_chunks,
    make_grid,
)
from segflow.errors import ConfigError


@pytest.mark.parametrize("length", [1, 7, 64, 65, 100, 511, 512, 513, 1000, 2049])
@pytest.mark.parametrize(("patch", "stride"), [(64, 48), (64, 64), (128, 32)])
def test_axis_starts_cover_every_pixel_and_stay_inside(length, patch, stride):
    starts = axis_starts(length, patch, stride)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all()
    assert starts[0] == 0
    assert list(starts) == sorted(set(starts))
    if length >= patch:
        assert starts[-1] == length - patch  # last patch aligned to the end, no overhang
    else:
        assert starts == (0,)


def test_coerce_overlap_fraction_and_pixels():
    assert coerce_overlap(0.25, (512, 512)) == (128, 128)
    assert coerce_overlap(32, (96, 96, 96)) == (32, 32, 32)
    assert coerce_overlap((0.5, 0), (64, 1)) == (32, 0)
    with pytest.raises(ConfigError, match="does not fit"):
        coerce_overlap(64, (64,))
    with pytest.raises(ConfigError):
        coerce_overlap(-0.1, (64,))
    with pytest.raises(ConfigError, match="needs 2 values"):
        coerce_overlap((1, 2, 3), (64, 64))


@pytest.mark.parametrize("shape", [(300, 257), (64, 64), (5, 1000), (1, 1)])
def test_touching_matches_brute_force(shape):
    grid = make_grid(shape, 64, 0.25)
    for region in [
        tuple(slice(0, n) for n in shape),
        (slice(10, 70), slice(0, 1)) if shape[0] >= 70 else None,
    ]:
        if region is None:
            continue
        expected = [i for i in grid.indices() if intersect(grid.extent(i), region) is not None]
        assert grid.touching(region) == expected


@pytest.mark.parametrize("shape", [(300, 257), (33, 200), (70, 70, 70)])
def test_cores_tile_the_image_exactly(shape):
    grid = make_grid(shape, 32, 0.5)
    count = np.zeros(shape, np.int32)
    for index in grid.indices():
        core = grid.core(index)
        extent = grid.extent(index)
        assert all(c.start >= e.start and c.stop <= e.stop for c, e in zip(core, extent))
        count[core] += 1
    assert (count == 1).all()


def test_chunks_partition_the_image():
    shape, chunk = (1000, 777), (256, 300)
    assert chunk_grid_shape(shape, chunk) == (4, 3)
    seen = np.zeros(shape, np.int32)
    for index in iter_chunks(shape, chunk):
        seen[chunk_region(index, shape, chunk)] += 1
    assert (seen == 1).all()


def test_grid_is_independent_of_anything_but_shape_patch_overlap():
    a = make_grid((999, 1001), 128, 0.25)
    b = make_grid((999, 1001), (128, 128), 32)
    assert a == b
    assert len(a) == np.prod(a.counts)
    assert all(len(s) == c for s, c in zip(a.starts, a.counts))
    assert list(itertools.islice(a.indices(), 2)) == [(0, 0), (0, 1)]
