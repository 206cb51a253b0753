"""Per-class connected components of a label store, chunk by chunk, seamless across chunks.

Pass 1 labels each chunk on its own (``scipy.ndimage.label``, one class at a time) and
keeps, per local component, its class, size and first pixel (global raster index), plus
the chunk's outermost layers of local ids. Adjacent layers are then compared plane by
plane (every chunk boundary along every axis, with the in-plane shifts that reach edge
and corner neighbours under full connectivity), and the pairs of touching local
components of the same class are merged with a union-find
(``scipy.sparse.csgraph.connected_components``). Pass 2 labels each chunk again (the
same result) and maps local ids to the global ones.

Global ids are numbered by each component's first pixel in raster order, so they do
not depend on the chunking, and within one class they equal ``scipy.ndimage.label``
of that class on the whole array.

Memory: one chunk at a time plus the faces of two slabs of chunks (the touching pairs
are found as each slab is done) and one row per component, never the image.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from segflow.io.zarr_sink import ZarrSink
from segflow.options import parse_choice

Ids = npt.NDArray[np.int64]
ChunkIndex = tuple[int, ...]


class Connectivity(StrEnum):
    FULL = "full"  # 8 neighbours in 2-D, 26 in 3-D
    FACE = "face"  # 4 neighbours in 2-D, 6 in 3-D

    @classmethod
    def parse(cls, value: str | Connectivity) -> Connectivity:
        return parse_choice(cls, value, "connectivity")


def structure_for(connectivity: Connectivity, ndim: int) -> npt.NDArray[np.bool_]:
    rank = ndim if connectivity is Connectivity.FULL else 1
    return np.asarray(ndimage.generate_binary_structure(ndim, rank), dtype=bool)


# --- one chunk -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkComponents:
    """The components of one chunk: ``ids`` 1..n (0 outside any), one entry per id."""

    ids: npt.NDArray[np.int64]
    classes: npt.NDArray[np.int64]
    sizes: npt.NDArray[np.int64]
    first: npt.NDArray[np.int64]  # global raster index of the component's first pixel


def label_chunk(
    labels: npt.NDArray[Any],
    wanted: Sequence[int],
    structure: npt.NDArray[np.bool_],
    region: Sequence[slice],
    shape: Sequence[int],
) -> ChunkComponents:
    """Label the classes ``wanted`` in one chunk, class after class."""
    ids = np.zeros(labels.shape, dtype=np.int64)
    local = np.empty(labels.shape, dtype=np.int32)
    counts = np.bincount(labels.ravel())
    classes: list[npt.NDArray[np.int64]] = []
    offset = 0
    for value in wanted:
        if value >= counts.size or counts[value] == 0:
            continue
        mask = labels == value
        n = int(ndimage.label(mask, structure, output=local))
        np.add(local, offset, out=local, where=mask)  # 0 stays 0 outside the class
        ids += local
        classes.append(np.full(n, value, dtype=np.int64))
        offset += n
    flat = ids.ravel()
    sizes = np.bincount(flat, minlength=offset + 1)[1:].astype(np.int64)
    first = np.full(offset + 1, flat.size, dtype=np.intp)
    np.minimum.at(first, flat, np.arange(flat.size, dtype=np.intp))
    firsts = _global_index(first[1:], labels.shape, region, shape)
    return ChunkComponents(ids, _concat(classes), sizes, firsts)


def _global_index(
    local: npt.NDArray[np.intp],
    chunk_shape: Sequence[int],
    region: Sequence[slice],
    shape: Sequence[int],
) -> npt.NDArray[np.int64]:
    """Chunk-local flat indices as flat indices of the whole array (row-major order agrees)."""
    coords = np.unravel_index(local, tuple(chunk_shape))
    moved = tuple(c + r.start for c, r in zip(coords, region, strict=True))
    return np.asarray(np.ravel_multi_index(moved, tuple(shape)), dtype=np.int64)


def _concat(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# --- the whole store -------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentTable:
    """One row per global component; component ``i`` is row ``i - 1``."""

    classes: npt.NDArray[np.int64]
    sizes: npt.NDArray[np.int64]
    first: npt.NDArray[np.int64]
    last_chunk: npt.NDArray[np.int64]  # ordinal (row-major) of the last chunk it touches

    def __len__(self) -> int:
        return int(self.classes.size)

    def of_class(self, value: int) -> npt.NDArray[np.int64]:
        """Ids of the components of class ``value``, in raster order of their first pixel."""
        return np.flatnonzero(self.classes == value).astype(np.int64) + 1


class Components:
    """Connected components of a finished store; build with :func:`find_components`."""

    def __init__(
        self,
        sink: ZarrSink,
        wanted: tuple[int, ...],
        connectivity: Connectivity,
        offsets: npt.NDArray[np.int64],
        to_global: npt.NDArray[np.int64],
        table: ComponentTable,
    ) -> None:
        self.sink = sink
        self.classes = wanted
        self.connectivity = connectivity
        self.structure = structure_for(connectivity, len(sink.layout.spatial_shape))
        self.table = table
        self._offsets = offsets  # first local id of each chunk (row-major ordinal), minus one
        self._to_global = to_global  # pass-1 id -> global id (0 -> 0)

    def chunk_indices(self) -> Iterator[ChunkIndex]:
        return iter(np.ndindex(*self.sink.chunk_grid_shape))

    def read_chunk(self, index: ChunkIndex) -> tuple[npt.NDArray[Any], Ids]:
        """The chunk's labels and global component ids (0 where no wanted class)."""
        labels, local = _label_stored_chunk(self.sink, index, self.classes, self.structure)
        ordinal = int(np.ravel_multi_index(index, self.sink.chunk_grid_shape))
        shifted = np.where(local.ids > 0, local.ids + self._offsets[ordinal], 0)
        return labels, self._to_global[shifted]


def find_components(
    store: str | os.PathLike[str] | ZarrSink,
    *,
    classes: Sequence[int] | None = None,
    connectivity: str | Connectivity = Connectivity.FULL,
) -> Components:
    """Connected components of the classes ``classes`` (default: all) of a complete store."""
    sink = ZarrSink.open_finished(store, purpose="finding connected components")
    conn = Connectivity.parse(connectivity)
    wanted = tuple(range(sink.layout.num_classes)) if classes is None else tuple(sorted(classes))
    structure = structure_for(conn, len(sink.layout.spatial_shape))
    first_pass = _first_pass(sink, wanted, structure, conn)
    to_global, table = _merge(first_pass, first_pass.pairs)
    return Components(sink, wanted, conn, first_pass.offsets, to_global, table)


def _label_stored_chunk(
    sink: ZarrSink, index: ChunkIndex, wanted: Sequence[int], structure: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[Any], ChunkComponents]:
    region = sink.chunk_region(index)
    labels = sink.read_labels(region)
    return labels, label_chunk(labels, wanted, structure, region, sink.layout.spatial_shape)


# --- pass 1: label chunks, keep their borders --------------------------------------------------


@dataclass
class FirstPass:
    offsets: npt.NDArray[np.int64]
    classes: npt.NDArray[np.int64]  # index 0 is "no component"
    sizes: npt.NDArray[np.int64]
    first: npt.NDArray[np.int64]
    chunk_of: npt.NDArray[np.int64]
    pairs: npt.NDArray[np.int64]  # (n, 2) pass-1 ids of same-class components that touch


Faces = dict[tuple[int, int, ChunkIndex], Ids]  # (axis, 0 low | 1 high, chunk) -> pass-1 ids


def _first_pass(
    sink: ZarrSink,
    wanted: Sequence[int],
    structure: npt.NDArray[np.bool_],
    connectivity: Connectivity,
) -> FirstPass:
    """Label every chunk; the touching pairs are found slab by slab (chunks sharing their
    first index), so only the faces of two slabs are held at a time."""
    grid = sink.chunk_grid_shape
    offsets = np.zeros(int(np.prod(grid)), dtype=np.int64)
    parts: dict[str, list[npt.NDArray[np.int64]]] = {"c": [], "s": [], "f": [], "o": []}
    faces: Faces = {}
    found: list[npt.NDArray[np.int64]] = [np.zeros((0, 2), dtype=np.int64)]
    total = 0
    for ordinal, index in enumerate(np.ndindex(*grid)):
        _, local = _label_stored_chunk(sink, index, wanted, structure)
        offsets[ordinal] = total
        ids = np.where(local.ids > 0, local.ids + total, 0)
        for axis in range(ids.ndim):
            faces[(axis, 0, index)] = np.take(ids, 0, axis=axis)
            faces[(axis, 1, index)] = np.take(ids, -1, axis=axis)
        parts["c"].append(local.classes)
        parts["s"].append(local.sizes)
        parts["f"].append(local.first)
        parts["o"].append(np.full(local.sizes.size, ordinal, dtype=np.int64))
        total += int(local.sizes.size)
        if all(i == g - 1 for i, g in zip(index[1:], grid[1:], strict=True)):  # slab done
            found.extend(_slab_pairs(faces, grid, index[0], connectivity))
            for key in [k for k in faces if k[2][0] < index[0] or k[:2] != (0, 1)]:
                del faces[key]  # keep only this slab's far faces, for the next slab

    def column(key: str, none: int) -> npt.NDArray[np.int64]:
        return np.concatenate([np.array([none], dtype=np.int64), *parts[key]])

    classes = column("c", -1)
    pairs = np.concatenate(found)
    pairs = pairs[classes[pairs[:, 0]] == classes[pairs[:, 1]]]
    pairs = np.unique(pairs, axis=0) if pairs.size else pairs.reshape(0, 2)
    return FirstPass(offsets, classes, column("s", 0), column("f", -1), column("o", -1), pairs)


def _slab_pairs(
    faces: Faces, grid: Sequence[int], slab: int, connectivity: Connectivity
) -> list[npt.NDArray[np.int64]]:
    """Pairs of components touching across the boundaries of one slab: the one with the
    slab before (a whole layer of the image, so edge and corner contacts are in it) and
    those between the slab's chunks."""
    found = []
    ndim = len(grid)
    reach = (-1, 0, 1) if connectivity is Connectivity.FULL else (0,)
    shifts = list(itertools.product(reach, repeat=ndim - 1))
    for axis in range(ndim):
        boundaries = ([slab] if slab > 0 else []) if axis == 0 else range(1, grid[axis])
        for boundary in boundaries:
            below = face_layer(faces, grid, axis, boundary - 1, 1, slab)
            above = face_layer(faces, grid, axis, boundary, 0, slab)
            for shift in shifts:
                found.append(_pairs_across(below, above, shift))
    return found


def face_layer(
    faces: Faces,
    grid: Sequence[int],
    axis: int,
    position: int,
    side: int,
    slab: int,
) -> Ids:
    """One layer of the image at ``position`` along ``axis``, as pass-1 ids: the whole layer
    for axis 0, the part in slab ``slab`` for the other axes."""
    others = [range(g) for a, g in enumerate(grid) if a != axis]
    if axis != 0:
        others[0] = range(slab, slab + 1)

    def face(rest: tuple[int, ...]) -> Ids:
        index = (*rest[:axis], position, *rest[axis:])
        return faces[(axis, side, index)]

    if len(others) == 1:
        return np.concatenate([face((i,)) for i in others[0]])
    return np.block([[face((i, j)) for j in others[1]] for i in others[0]])


def _pairs_across(below: Ids, above: Ids, shift: tuple[int, ...]) -> npt.NDArray[np.int64]:
    """Distinct pairs (below[p], above[p + shift]) that are both components."""
    src = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, below.shape, strict=True))
    dst = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shift, above.shape, strict=True))
    a, b = below[src].ravel(), above[dst].ravel()
    keep = (a > 0) & (b > 0)
    pairs = np.stack([a[keep], b[keep]], axis=1)
    return np.unique(pairs, axis=0) if pairs.size else pairs.reshape(0, 2)


# --- merge -----------------------------------------------------------------------------------


def _merge(
    first: FirstPass, pairs: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], ComponentTable]:
    """Pass-1 id -> global id, and the global table (ids in raster order of first pixel)."""
    n = first.sizes.size  # includes the "no component" entry 0
    root = np.arange(n, dtype=np.int64)
    if pairs.size:
        nodes, inverse = np.unique(pairs, return_inverse=True)
        edges = inverse.reshape(-1, 2)
        graph = coo_matrix(
            (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])),
            shape=(nodes.size, nodes.size),
        )
        _, group = connected_components(graph, directed=False)
        # each group's representative: the member with the smallest first pixel
        rep = np.full(group.max() + 1, -1, dtype=np.int64)
        order = np.argsort(first.first[nodes], kind="stable")[::-1]
        rep[group[order]] = nodes[order]  # the last write per group wins: the smallest first pixel
        root[nodes] = rep[group]
    roots = np.flatnonzero(root[1:] == np.arange(1, n)) + 1  # representatives of each component
    ranked = roots[np.argsort(first.first[roots], kind="stable")]
    number = np.zeros(n, dtype=np.int64)
    number[ranked] = np.arange(1, ranked.size + 1)
    to_global = number[root]
    count = ranked.size
    sizes = np.bincount(to_global, weights=first.sizes, minlength=count + 1)[1:]
    last = np.zeros(count + 1, dtype=np.int64)
    np.maximum.at(last, to_global, first.chunk_of)
    table = ComponentTable(
        classes=first.classes[ranked],
        sizes=np.rint(sizes).astype(np.int64),
        first=first.first[ranked],
        last_chunk=last[1:],
    )
    return to_global, table
