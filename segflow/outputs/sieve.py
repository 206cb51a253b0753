"""GDAL's sieve (``rasterio.features.sieve``) on a raster label store, chunk by chunk.

GDALSieveFilter (alg/gdalsievefilter.cpp) works on the polygons of the image, the
connected components of equal values (4- or 8-connected). For every pair of adjacent
pixels of two polygons it calls ``CompareNeighbour`` in raster order, and for each
pixel in the order up, up-left, up-right, left (the diagonals only with 8-connectivity);
each polygon's "biggest neighbour" is replaced only by a strictly larger one. So a
polygon's biggest neighbour is, among its neighbours of the largest size, the one it
touches first in that order. A polygon smaller than the threshold then follows the
chain of biggest neighbours until one is at least the threshold and takes its value;
a chain that ends without neighbours or runs into a cycle leaves it unchanged. (GDAL
walks the polygons one by one and shortens the chains as it goes; neither changes
where a chain ends.)

The same here, on the component graph: components (sizes, ids) come from
:mod:`segflow.outputs.components`; one pass over the chunks in raster order keeps the
bottom row of the chunk row above and the right column of the chunk to the left,
finds every adjacent pair of pixels of two components of which one is small, once,
and keeps per small component the best neighbour by (size, first contact), a contact
being ranked by ``4 * flat index of the later pixel + direction``. The chains are
followed by pointer doubling. The result equals ``rasterio.features.sieve`` of the
whole array.

Nodata is rasterio's ``mask``: nodata pixels belong to no polygon, are never a
neighbour, keep their value and count in no size.

Volumes: the same rule in 3-D (6 or 26 neighbours), with the contacts ranked as in
:mod:`segflow.outputs.contacts`; there is no whole-array 3-D sieve in GDAL to compare
with, so the tests compare with that rule applied to the whole array with scipy.

Memory: one chunk, two image rows, one chunk column and a few numbers per component
(volumes: the faces of two slabs of chunks instead of the rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from segflow.outputs.components import Components, Connectivity
from segflow.outputs.contacts import find_contacts

Ids = npt.NDArray[np.int64]

# (rank within one pixel, row offset, column offset) of the neighbours GDAL compares
NEIGHBOURS_8 = ((0, -1, 0), (1, -1, -1), (2, -1, 1), (3, 0, -1))
NEIGHBOURS_4 = ((0, -1, 0), (3, 0, -1))
NO_CONTACT = np.iinfo(np.int64).max


@dataclass(frozen=True)
class SievePlan:
    """What the sieve does, per global component id (index 0 = no component)."""

    becomes: Ids  # the class a component takes, -1 where it stays as it is
    small: int  # components below the threshold
    merged: int  # ... that take a neighbour's class
    isolated: int  # ... without any neighbour (nodata or the image edge all round)
    unmergeable: int  # ... whose chain of biggest neighbours reaches no large component

    def describe(self) -> dict[str, int]:
        return {
            "small": self.small,
            "merged": self.merged,
            "isolated": self.isolated,
            "unmergeable": self.unmergeable,
        }


def plan_sieve(components: Components, threshold: float) -> SievePlan:
    """Which components below ``threshold`` pixels merge into which class."""
    table = components.table
    sizes = np.concatenate(([0], table.sizes)).astype(np.int64)
    small = sizes < threshold
    small[0] = False
    if len(components.sink.layout.spatial_shape) == 2:
        neighbour = _biggest_neighbours(components, sizes, small)
    else:  # volumes: GDAL's rule in 3-D (segflow.outputs.contacts)
        best = _Best.empty(sizes.size)
        find_contacts(components, small, lambda a, b, at: best.offer(a, b, sizes[b], at))
        neighbour = best.neighbour
    final = _chain_ends(neighbour, small)
    merged = small & (final > 0) & ~small[final]
    becomes = np.full(sizes.size, -1, dtype=np.int64)
    classes = np.concatenate(([-1], table.classes)).astype(np.int64)
    becomes[merged] = classes[final[merged]]
    lonely = small & (neighbour < 0)
    return SievePlan(
        becomes=becomes,
        small=int(small.sum()),
        merged=int(merged.sum()),
        isolated=int(lonely.sum()),
        unmergeable=int((small & ~lonely & ~merged).sum()),
    )


def _chain_ends(neighbour: Ids, small: npt.NDArray[np.bool_]) -> Ids:
    """Where each chain of biggest neighbours ends: a large component, or 0 (none / a cycle)."""
    n = neighbour.size
    step = np.arange(n, dtype=np.int64)  # large components (and 0) end their own chain
    step[small] = np.where(neighbour[small] >= 0, neighbour[small], 0)
    for _ in range(n.bit_length() + 1):  # 2^rounds > n steps: any chain that ends has ended
        step = step[step]
    step[small[step]] = 0  # still on a small component: a cycle
    return step


@dataclass
class _Best:
    """Per component, the best neighbour so far: largest, then first contact."""

    size: Ids
    contact: Ids
    neighbour: Ids

    @classmethod
    def empty(cls, n: int) -> _Best:
        return cls(
            np.full(n, -1, dtype=np.int64),
            np.full(n, NO_CONTACT, dtype=np.int64),
            np.full(n, -1, dtype=np.int64),
        )

    def offer(self, who: Ids, other: Ids, other_size: Ids, contact: Ids) -> None:
        if not who.size:
            return
        order = np.lexsort((contact, -other_size, who))  # per component: largest, then first
        who, other, other_size, contact = (
            who[order],
            other[order],
            other_size[order],
            contact[order],
        )
        first = np.concatenate(([True], who[1:] != who[:-1]))
        who, other, other_size, contact = (
            who[first],
            other[first],
            other_size[first],
            contact[first],
        )
        have = self.size[who]
        better = (other_size > have) | ((other_size == have) & (contact < self.contact[who]))
        who = who[better]
        self.size[who] = other_size[better]
        self.contact[who] = contact[better]
        self.neighbour[who] = other[better]


def _biggest_neighbours(components: Components, sizes: Ids, small: npt.NDArray[np.bool_]) -> Ids:
    """Per component id: its biggest neighbour as GDAL finds it (-1: none), for small ones."""
    sink = components.sink
    width = int(sink.layout.spatial_shape[1])
    order = NEIGHBOURS_8 if components.connectivity is Connectivity.FULL else NEIGHBOURS_4
    best = _Best.empty(sizes.size)
    # image rows padded by one column each side: above = the row over this chunk row
    above = np.zeros(width + 2, dtype=np.int64)
    bottom = np.zeros(width + 2, dtype=np.int64)
    left = np.zeros(0, dtype=np.int64)
    for index in components.chunk_indices():
        rows, cols = sink.chunk_region(index)
        _, ids = components.read_chunk(index)
        if cols.start == 0:
            above, bottom = (bottom, above) if rows.start > 0 else (above, bottom)
            left = np.zeros(ids.shape[0], dtype=np.int64)
        ext = _extended(ids, above[cols.start : cols.stop + 2], left)
        for rank, dy, dx in order:
            who, other, contact = _contacts(
                ext, small, rank, dy, dx, (rows.start, cols.start), width
            )
            best.offer(who, other, sizes[other], contact)
        bottom[cols.start + 1 : cols.stop + 1] = ids[-1]
        left = ids[:, -1].copy()
    return best.neighbour


def _extended(ids: Ids, above: Ids, left: Ids) -> Ids:
    """The chunk with the row above it (one column further each side) and the column left
    of it; column 0 is padding, the last column holds only the pixel up-right of the chunk."""
    h, w = ids.shape
    ext = np.zeros((h + 1, w + 3), dtype=np.int64)
    ext[0, 1:] = above
    ext[1:, 1] = left
    ext[1:, 2 : w + 2] = ids
    return ext


def _contacts(
    ext: Ids,
    small: npt.NDArray[np.bool_],
    rank: int,
    dy: int,
    dx: int,
    origin: tuple[int, int],
    width: int,
) -> tuple[Ids, Ids, Ids]:
    """Pixel pairs (p, p + (dy, dx)) of two components, one small, with p or its neighbour in
    the chunk: (small component, the other, contact rank), both ways round."""
    h, w = ext.shape[0] - 1, ext.shape[1] - 3
    here = ext[1:, 1 : w + 2]  # p over the left column and the chunk
    there = ext[1 + dy : h + 1 + dy, 1 + dx : w + 2 + dx]
    candidate = (here != there) & (here > 0) & (there > 0) & (small[here] | small[there])
    i, j = np.nonzero(candidate)
    # p in the chunk (j >= 1), or p left of it with its neighbour in it (up-right only)
    ours = (j >= 1) | ((i + dy >= 0) & (j + dx >= 1) & (j + dx <= w))
    i, j = i[ours], j[ours]
    a, b = here[i, j], there[i, j]
    flat = (i + origin[0]).astype(np.int64) * width + (j + origin[1] - 1)
    contact = flat * 4 + rank
    who = np.concatenate((a[small[a]], b[small[b]]))
    other = np.concatenate((b[small[a]], a[small[b]]))
    return who, other, np.concatenate((contact[small[a]], contact[small[b]]))
