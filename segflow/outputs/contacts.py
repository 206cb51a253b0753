"""GDAL's sieve rule in any number of dimensions: contacts between components, chunk by chunk.

GDAL (2-D) compares each pixel with its neighbours that come before it in raster order,
in the order up, up-left, up-right, left, and a polygon's biggest neighbour is replaced
only by a strictly larger one, so ties go to the first contact. The same rule in N
dimensions: the neighbours of a voxel that come before it are the offsets whose first
non-zero step is -1; they are ranked by the axis of that step (earlier axes first), then
by the steps along the later axes in the order 0, -1, +1. In 2-D this is GDAL's order;
in 3-D, 13 offsets for 26-connectivity and 3 for 6-connectivity. A contact (p, q),
q = p + d before p, ranks ``len(offsets) * flat index of p + rank of d``.

The pairs inside a chunk come from the chunk itself; the pairs across chunk borders come
from the chunks' faces, one boundary layer at a time (a whole layer of the image for the
first axis, so edge and corner contacts are in it; within one slab for the others), with
the faces of two slabs held at a time. A pair that crosses two borders is seen twice with
the same rank, which changes no choice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from segflow.outputs.components import Components, Connectivity, Faces, face_layer

Ids = npt.NDArray[np.int64]
Offer = Callable[[Ids, Ids, Ids], None]  # (component, neighbour, contact rank)


def backward_offsets(ndim: int, connectivity: Connectivity) -> list[tuple[int, ...]]:
    """The neighbours before a voxel in raster order, in GDAL's order generalised."""
    steps = (0, -1, 1) if connectivity is Connectivity.FULL else (0,)
    offsets = []
    for lead in range(ndim):
        for tail in itertools.product(steps, repeat=ndim - lead - 1):
            offsets.append((0,) * lead + (-1,) + tail)
    return offsets


def find_contacts(components: Components, small: npt.NDArray[np.bool_], offer: Offer) -> None:
    """Call ``offer(small component, neighbour, contact rank)`` for every pair of adjacent
    voxels of two components of which one (or both) is small, both ways round."""
    sink = components.sink
    shape = tuple(int(n) for n in sink.layout.spatial_shape)
    grid = sink.chunk_grid_shape
    offsets = backward_offsets(len(shape), components.connectivity)
    rank = {d: r for r, d in enumerate(offsets)}
    faces: Faces = {}

    def pairs(later: Ids, earlier: Ids, starts: Sequence[int], d: tuple[int, ...]) -> None:
        """``later`` (at ``starts`` in the image) and ``earlier`` = the voxels at ``+ d``."""
        hit = (later != earlier) & (later > 0) & (earlier > 0) & (small[later] | small[earlier])
        where = np.nonzero(hit)
        a, b = later[where], earlier[where]
        at = tuple(w + s for w, s in zip(where, starts, strict=True))
        flat = np.ravel_multi_index(at, shape)
        contact = np.asarray(flat, dtype=np.int64) * len(offsets) + rank[d]
        offer(a[small[a]], b[small[a]], contact[small[a]])
        offer(b[small[b]], a[small[b]], contact[small[b]])

    for index in np.ndindex(*grid):
        region = sink.chunk_region(index)
        _, ids = components.read_chunk(index)
        for d in offsets:
            inner = tuple(
                slice(max(0, -s), n - max(0, s)) for s, n in zip(d, ids.shape, strict=True)
            )
            moved = tuple(slice(i.start + s, i.stop + s) for i, s in zip(inner, d, strict=True))
            starts = [r.start + i.start for r, i in zip(region, inner, strict=True)]
            pairs(ids[inner], ids[moved], starts, d)
        for axis in range(ids.ndim):
            faces[(axis, 0, index)] = np.take(ids, 0, axis=axis)
            faces[(axis, 1, index)] = np.take(ids, -1, axis=axis)
        if all(i == g - 1 for i, g in zip(index[1:], grid[1:], strict=True)):  # slab done
            _across(faces, sink.chunk_region, grid, index[0], components.connectivity, pairs)
            for key in [k for k in faces if k[2][0] < index[0] or k[:2] != (0, 1)]:
                del faces[key]


def _across(
    faces: Faces,
    region_of: Callable[[tuple[int, ...]], tuple[slice, ...]],
    grid: Sequence[int],
    slab: int,
    connectivity: Connectivity,
    pairs: Callable[[Ids, Ids, Sequence[int], tuple[int, ...]], None],
) -> None:
    """The pairs across the boundaries of one slab: with the slab before, and between its
    chunks. ``u`` on the low side of a boundary of ``axis``, ``v = u + e_axis + shift``."""
    ndim = len(grid)
    reach = (-1, 0, 1) if connectivity is Connectivity.FULL else (0,)
    slab_start = region_of((slab,) + (0,) * (ndim - 1))[0].start
    for axis in range(ndim):
        boundaries = ([slab] if slab > 0 else []) if axis == 0 else range(1, grid[axis])
        for boundary in boundaries:
            low = face_layer(faces, grid, axis, boundary - 1, 1, slab)
            high = face_layer(faces, grid, axis, boundary, 0, slab)
            at = region_of(tuple(boundary if a == axis else 0 for a in range(ndim)))[axis].start
            origin = [0 if a != 0 or axis == 0 else slab_start for a in range(ndim) if a != axis]
            for shift in itertools.product(reach, repeat=ndim - 1):
                src = tuple(
                    slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, low.shape, strict=True)
                )
                dst = tuple(slice(i.start + s, i.stop + s) for i, s in zip(src, shift, strict=True))
                step = [*shift[:axis], 1, *shift[axis:]]  # v - u
                u = [o + i.start for o, i in zip(origin, src, strict=True)]
                u.insert(axis, at - 1)
                lower = np.expand_dims(low[src], axis)
                upper = np.expand_dims(high[dst], axis)
                if next(s for s in step if s != 0) > 0:  # v comes after u
                    v = [a + s for a, s in zip(u, step, strict=True)]
                    pairs(upper, lower, v, tuple(-s for s in step))
                else:
                    pairs(lower, upper, u, tuple(step))
