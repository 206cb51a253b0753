"""Connected components computed chunk by chunk equal scipy.ndimage.label on the whole array."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from segflow.errors import ConfigError, OutputError, one_line
from segflow.outputs.components import Connectivity, find_components, structure_for
from tests.outputs.label_stores import NODATA, blobs, stored_ids, write_store

CASES = [
    ((70, 90), (16, 16)),
    ((64, 64), (16, 32)),  # sizes that are multiples of the chunk
    ((37, 53), (64, 64)),  # one chunk, clipped
    ((20, 25, 30), (8, 8, 8)),
    ((17, 16, 19), (16, 5, 7)),
]


def per_class_ranks(ids: np.ndarray, table, value: int) -> np.ndarray:
    """Our ids of class ``value`` renumbered 1..n in their order: scipy's numbering."""
    members = table.of_class(value)
    rank = np.zeros(len(table) + 1, np.int64)
    rank[members] = np.arange(1, members.size + 1)
    return rank[ids]


@pytest.mark.parametrize("connectivity", ["full", "face"])
@pytest.mark.parametrize(("shape", "chunk"), CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_components_equal_whole_array_label(tmp_path, shape, chunk, connectivity):
    labels = blobs(shape, seed=len(shape))
    components = find_components(
        write_store(tmp_path / "s.zarr", labels, chunk), connectivity=connectivity
    )
    ids = stored_ids(components)
    structure = structure_for(Connectivity(connectivity), len(shape))
    table = components.table
    for value in range(3):
        expected, n = ndimage.label(labels == value, structure)
        assert table.of_class(value).size == n
        np.testing.assert_array_equal(
            per_class_ranks(ids, table, value) * (labels == value), expected
        )
        sizes = table.sizes[table.of_class(value) - 1]
        np.testing.assert_array_equal(sizes, np.bincount(expected.ravel())[1:])
    assert (ids[labels == NODATA] == 0).all()


@pytest.mark.parametrize("shape", [(90, 77), (21, 22, 23)])
def test_ids_do_not_depend_on_the_chunking(tmp_path, shape):
    labels = blobs(shape, seed=5)
    chunkings = [(16,) * len(shape), (7,) * len(shape), shape]
    results = [
        stored_ids(find_components(write_store(tmp_path / f"{i}.zarr", labels, c)))
        for i, c in enumerate(chunkings)
    ]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


def test_corner_contact_joins_only_with_full_connectivity(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[15, 15] = labels[16, 16] = 1  # touching only at the corner of four chunks
    labels[15, 16] = labels[16, 15] = 2  # the other diagonal, another class
    store = write_store(tmp_path / "c.zarr", labels, (16, 16))
    full = find_components(store).table
    face = find_components(store, connectivity="face").table
    assert full.of_class(1).size == 1 and full.sizes[full.of_class(1) - 1].tolist() == [2]
    assert full.of_class(2).size == 1  # both diagonals connect under 8-connectivity
    assert face.of_class(1).size == 2 and face.of_class(2).size == 2


def test_3d_edge_and_corner_contacts(tmp_path):
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[7, 7, 7] = labels[8, 8, 8] = 1  # corner of eight chunks
    labels[7, 7, 3] = labels[8, 8, 3] = 2  # an edge shared by four chunks
    store = write_store(tmp_path / "v.zarr", labels, (8, 8, 8))
    full = find_components(store).table
    assert full.of_class(1).size == 1 and full.of_class(2).size == 1
    assert find_components(store, connectivity="face").table.of_class(1).size == 2


def test_a_snake_through_many_chunks_is_one_component(tmp_path):
    labels = np.zeros((60, 60), np.uint8)
    for row in range(2, 58, 4):  # a serpentine: rows joined at alternating ends
        labels[row, 2:58] = 1
        end = 57 if (row // 4) % 2 == 0 else 2
        labels[row : row + 4, end] = 1
    labels[labels.shape[0] - 2 :, :] = 0
    store = write_store(tmp_path / "s.zarr", labels, (8, 8))
    table = find_components(store, classes=[1]).table
    assert len(table) == ndimage.label(labels == 1)[1] == 1
    assert table.sizes.tolist() == [int((labels == 1).sum())]


def test_only_the_requested_classes_are_labelled(tmp_path):
    labels = blobs((40, 40))
    table = find_components(write_store(tmp_path / "s.zarr", labels, (16, 16)), classes=[2]).table
    assert set(table.classes.tolist()) == {2}


def test_incomplete_store_is_a_one_line_error(tmp_path):
    store = write_store(tmp_path / "p.zarr", blobs((40, 40)), (16, 16), finalize=False)
    with pytest.raises(OutputError, match="not complete") as caught:
        find_components(store)
    assert "\n" not in one_line(caught.value)


def test_unknown_connectivity_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'face'"):
        Connectivity.parse("fase")
