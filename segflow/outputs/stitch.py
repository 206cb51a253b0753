"""Exact stitching of polygon pieces cut by horizontal strip borders, as rings of integer vertices.

Polygons are vectorised one strip (one chunk row) at a time, in the image's pixel
coordinates (integers). A component that crosses a strip border is cut there; this
module joins its pieces without a geometry overlay, so memory stays with the open
boundary rather than with the pieces of the image above:

- every ring is oriented with the component on its left (exterior rings counter-
  clockwise by the shoelace sign, holes clockwise), so boundaries join head to tail;
- a piece's rings lose their segments that lie on a cut line; what is left are chains
  whose ends sit on the cut lines (a ring without such segments is closed already);
- along a cut line ``y = Y`` the boundary is rebuilt from the two pixel rows beside it:
  unit edges where exactly one side belongs to a component, merged into runs;
- at each vertex on the line, the chains and runs of one component are linked; where
  two of its pixels touch only diagonally (two ways in, two ways out), the way in
  along one of them goes on along the other, so no ring touches itself there: the
  background on each side becomes its own ring (a hole touching the shell at a point),
  as in GDAL's whole-array polygons and as OGC validity wants;
- closed rings are final; open chains (ends on the strip's bottom line) wait for the
  next strip. A component is done when it has no open chain left; its rings then lose
  their collinear vertices and become one shell and its holes.

Vertices are int32 (images up to 2^31 pixels a side).

Memory: the ends of the open chains of components still open; their middles (past a
few thousand vertices) and their closed rings wait in a temporary file (8 bytes a
vertex) until the component is done, which then is the only one read back.
"""

from __future__ import annotations

import tempfile
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
import shapely.geometry

Coords = npt.NDArray[np.int32]  # (n, 2): x (column), y (row) of pixel corners
Pixel = tuple[int, int]  # (row, column)


Place = tuple[int, int]  # (byte offset, vertices) of a run of vertices in the spill file
Part = Coords | Place
SPILL_AT = 4096  # vertices of one open chain kept in memory before its middle is spilled


@dataclass(frozen=True)
class Chain:
    """A directed boundary path of one component, with the component on its left: parts in
    order, the first and the last in memory with two vertices or more (the ends decide
    how chains join), the others in memory or in the spill file."""

    gid: int
    parts: tuple[Part, ...]

    @property
    def head(self) -> Coords:
        return _in_memory(self.parts[0])

    @property
    def tail(self) -> Coords:
        return _in_memory(self.parts[-1])

    @property
    def start(self) -> tuple[int, int]:
        return int(self.head[0, 0]), int(self.head[0, 1])

    @property
    def end(self) -> tuple[int, int]:
        return int(self.tail[-1, 0]), int(self.tail[-1, 1])

    def start_pixel(self) -> Pixel:
        return _left_pixel(self.head[0], self.head[1])

    def end_pixel(self) -> Pixel:
        step = np.sign(self.tail[-1] - self.tail[-2])
        return _left_pixel(self.tail[-1] - step, self.tail[-1])


def _in_memory(part: Part) -> Coords:
    if isinstance(part, tuple):
        raise AssertionError("the ends of a chain are kept in memory")
    return part


def _left_pixel(a: Coords, b: Coords) -> Pixel:
    """The pixel left of the unit edge that leaves ``a`` towards ``b`` (axis-aligned)."""
    dx, dy = (int(v) for v in np.sign(b - a))
    # centre of the pixel: the edge's midpoint moved half a pixel to the left (-dy, dx)
    col = int(a[0]) + (dx - dy) / 2
    row = int(a[1]) + (dy + dx) / 2
    return int(np.floor(row)), int(np.floor(col))


def oriented(ring: Any, exterior: bool) -> Coords:
    """A GeoJSON ring (closed) as (n, 2) int32 vertices, not closed, component on the left."""
    closed = np.rint(np.asarray(ring, dtype=np.float64)[:, :2]).astype(np.int32)
    x, y = closed[:, 0], closed[:, 1]
    twice_area = int(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
    coords = closed[:-1]
    return coords if (twice_area > 0) == exterior else coords[::-1].copy()


def shoelace(coords: Coords) -> int:
    """Twice the signed area of an open ring (positive: counter-clockwise, x right, y up)."""
    x, y = coords[:, 0].astype(np.int64), coords[:, 1].astype(np.int64)
    return int(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + x[-1] * y[0] - x[0] * y[-1])


def _rolled(a: Any, shift: int) -> Any:
    """``np.roll(a, shift, axis=0)`` for shift -1 or 1, without its overhead on small rings."""
    return np.concatenate((a[1:], a[:1])) if shift == -1 else np.concatenate((a[-1:], a[:-1]))


def cut(coords: Coords, lines: Sequence[int]) -> list[Coords] | None:
    """The chains left when the segments lying on the lines ``y in lines`` are removed;
    None when the ring has no such segment (it stays closed)."""
    y = coords[:, 1]
    on = y == _rolled(y, -1)
    on &= (y == lines[0]) if len(lines) == 1 else np.isin(y, lines)
    if not on.any():
        return None
    first = int(np.argmax(on))
    coords = np.roll(coords, -(first + 1), axis=0)  # now the last segment lies on a line
    on = np.roll(on, -(first + 1))
    off = np.concatenate(([False], ~on, [False])).astype(np.int8)
    starts = np.flatnonzero(np.diff(off) == 1)
    stops = np.flatnonzero(np.diff(off) == -1)  # segment a..b-1 -> vertices a..b
    return [coords[a : b + 1] for a, b in zip(starts, stops, strict=True)]


def runs(
    above: npt.NDArray[np.integer[Any]], below: npt.NDArray[np.integer[Any]], y: int
) -> list[Chain]:
    """The boundary along ``y`` between two pixel rows of component ids, as chains (runs):
    leftwards under a component above, rightwards over a component below."""
    chains: list[Chain] = []
    for row, backwards in (
        (np.where(above != below, above, 0), True),
        (np.where(below != above, below, 0), False),
    ):
        change = np.flatnonzero(np.diff(row)) + 1
        starts = np.concatenate(([0], change)).tolist()
        stops = np.concatenate((change, [row.size])).tolist()
        for a, b in zip(starts, stops, strict=True):
            gid = int(row[a])
            if gid:
                xs = (b, a) if backwards else (a, b)
                run = np.array([[xs[0], y], [xs[1], y]], dtype=np.int32)
                chains.append(Chain(gid, (run,)))
    return chains


def link(chains: Sequence[Chain], y: int) -> tuple[list[list[Part]], list[list[Part]]]:
    """Join the chains of one component at their ends on ``y``: the parts of the open
    paths and of the closed rings (the vertex where two chains meet comes twice)."""
    outs: dict[int, list[int]] = defaultdict(list)
    for i, chain in enumerate(chains):
        if chain.start[1] == y:
            outs[chain.start[0]].append(i)
    after: dict[int, int] = {}
    for i, chain in enumerate(chains):
        if chain.end[1] != y:
            continue
        ways = outs[chain.end[0]]
        if len(ways) == 1:
            after[i] = ways[0]
        else:  # two of its pixels touch diagonally: go on along the other one
            pixel = chain.end_pixel()
            (after[i],) = [j for j in ways if chains[j].start_pixel() != pixel]
    paths: list[list[Part]] = []
    seen: set[int] = set()
    for i, chain in enumerate(chains):
        if chain.start[1] != y:  # a path from the next line to the next line
            paths.append([p for j in _follow(i, after, seen) for p in chains[j].parts])
    rings = []
    for i in range(len(chains)):
        if i not in seen:
            rings.append([p for j in _follow(i, after, seen) for p in chains[j].parts])
    return paths, rings


def _follow(i: int, after: dict[int, int], seen: set[int]) -> list[int]:
    members = [i]
    seen.add(i)
    while (i := after.get(i, -1)) >= 0 and i not in seen:
        members.append(i)
        seen.add(i)
    return members


def _distinct(ring: Coords) -> Coords:
    """The ring without a vertex that repeats the one before it (where chains met)."""
    kept: Coords = ring[(ring != _rolled(ring, 1)).any(axis=1)]
    return kept


def without_collinear(ring: Coords) -> Coords:
    """The ring without repeated vertices and without vertices where it goes straight on."""
    ring = _distinct(ring)
    flat_before = ring[:, 1] == _rolled(ring[:, 1], 1)  # every segment is axis-aligned
    flat_after = _rolled(flat_before, -1)
    kept: Coords = ring[flat_before != flat_after]
    return kept


class Spill:
    """Closed rings of components still open, in a temporary file until they are done."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="segflow-rings-")  # noqa: SIM115 (closed by close)
        self._end = 0

    def put(self, coords: Any) -> Place:
        """Append vertices (stored as int32 x, y); their place."""
        data = np.ascontiguousarray(coords, dtype=np.int32)
        self._file.write(data.tobytes())
        place = (self._end, int(data.shape[0]))
        self._end += data.nbytes
        return place

    def read(self, place: Place) -> Coords:
        at, count = place
        self._file.seek(at)
        data = self._file.read(count * 8)
        self._file.seek(self._end)
        return np.frombuffer(data, dtype=np.int32).reshape(count, 2)

    def get(self, places: array[int]) -> Iterator[Coords]:
        """The rings noted in ``places`` (offset, vertices, offset, ...), as (n, 2) int32."""
        for at, count in zip(places[::2], places[1::2], strict=True):
            yield self.read((at, count))

    def joined(self, parts: Sequence[Part]) -> Coords:
        """The vertices of parts in order, each part read back where it was spilled."""
        return np.concatenate([self.read(p) if isinstance(p, tuple) else p for p in parts])

    def compact(self, gid: int, parts: list[Part]) -> Chain:
        """A chain of these parts; past SPILL_AT vertices in memory, all but its two first
        and two last vertices go to the file (runs of parts in memory written as one)."""
        if sum(len(p) for p in parts if not isinstance(p, tuple)) <= SPILL_AT:
            return Chain(gid, tuple(parts))
        head, tail = _in_memory(parts[0]), _in_memory(parts[-1])
        if len(parts) == 1:
            middle: list[Part] = [head[2:-2]]
        else:
            middle = [head[2:], *parts[1:-1], tail[:-2]]
        spilled: list[Part] = []
        pending: list[Coords] = []
        for part in [*middle, ()]:  # () ends the last run
            if isinstance(part, tuple):
                if pending:
                    spilled.append(self.put(np.concatenate(pending)))
                    pending = []
                if part:
                    spilled.append(part)
            elif len(part):
                pending.append(part)
        return Chain(gid, (head[:2], *spilled, tail[-2:]))

    def close(self) -> None:
        self._file.close()


@dataclass
class Open:
    """What is known of one component that is not finished: open chains and closed rings."""

    chains: list[Chain] = field(default_factory=list)
    rings: array[int] = field(default_factory=lambda: array("q"))  # closed by stitching, spilled
    holes: array[int] = field(default_factory=lambda: array("q"))  # holes of pieces, spilled


class Stitcher:
    """Feeds strips of polygon pieces in order; yields each component once it is complete."""

    def __init__(self, height: int) -> None:
        self.height = height
        self.open: dict[int, Open] = {}
        self.spill = Spill()

    def strip(
        self,
        pieces: Iterable[tuple[Any, int]],
        rows: slice,
        above: npt.NDArray[np.integer[Any]] | None,
        first_row: npt.NDArray[np.integer[Any]],
        last_row: npt.NDArray[np.integer[Any]],
    ) -> Iterator[tuple[Any, int]]:
        """(shapely Polygon, id) for the components done with this strip.

        ``pieces``: the strip's GeoJSON polygons in image pixel coordinates; ``above``:
        the ids of the row over the strip (None for the first strip); ``first_row`` and
        ``last_row``: the strip's first and last rows of ids.
        """
        top = rows.start if above is not None else None
        bottom = rows.stop if rows.stop < self.height else None
        lines = [v for v in (top, bottom) if v is not None]
        # a piece that reaches no cut line is a whole component: no other piece can join it
        crossing = set()
        if top is not None:
            crossing.update(np.unique(first_row).tolist())
        if bottom is not None:
            crossing.update(np.unique(last_row).tolist())
        touched: set[int] = set()
        for geometry, gid in pieces:
            if gid in crossing:
                self._cut_piece(geometry["coordinates"], gid, lines)
                touched.add(gid)
            else:
                yield shapely.geometry.shape(geometry), gid
        if top is not None:
            assert above is not None
            touched.update(self._stitch(top, runs(above, first_row, top)))
        for gid in sorted(touched):
            state = self.open[gid]
            if not state.chains:
                del self.open[gid]
                rings = list(self.spill.get(state.rings))
                holes = list(self.spill.get(state.holes))
                yield polygon_of(rings, holes), gid

    def close(self) -> None:
        self.spill.close()

    def _cut_piece(self, rings: Any, gid: int, lines: list[int]) -> None:
        chains = cut(oriented(rings[0], True), lines)
        if chains is None:
            raise AssertionError(f"a piece of component {gid} on a cut line does not reach it")
        state = self.open.setdefault(gid, Open())
        state.chains.extend(Chain(gid, (c,)) for c in chains)
        for hole in rings[1:]:  # final: GDAL's rings, valid and without collinear vertices
            state.holes.extend(self.spill.put(np.rint(np.asarray(hole, dtype=np.float64)[:, :2])))

    def _stitch(self, y: int, along: list[Chain]) -> set[int]:
        """Join every open component's chains at ``y``; the components involved."""
        extra: dict[int, list[Chain]] = defaultdict(list)
        for chain in along:
            extra[chain.gid].append(chain)
        involved = {gid for gid, state in self.open.items() if state.chains} | set(extra)
        for gid in involved:
            state = self.open.setdefault(gid, Open())
            chains = [*state.chains, *extra.get(gid, [])]
            paths, rings = link(chains, y)
            state.chains = [self.spill.compact(gid, parts) for parts in paths]
            for parts in rings:
                state.rings.extend(self.spill.put(self.spill.joined(parts)))
        return involved


def polygon_of(rings: list[Coords], holes: Sequence[Any] = ()) -> Any:
    """One shapely Polygon from a component's rings closed by stitching (one shell, any
    holes) and the holes of its pieces."""
    shells: list[Coords] = []
    inner: list[Any] = list(holes)
    for whole in rings:
        for ring in apart(_distinct(whole)):
            clean = without_collinear(ring)
            (shells if shoelace(clean) > 0 else inner).append(clean)
    if len(shells) != 1:  # a 4-connected set of squares has one outer ring
        raise AssertionError(f"a component's rings hold {len(shells)} outer rings")
    return shapely.Polygon(shells[0], inner)


def apart(ring: Coords) -> list[Coords]:
    """A ring that passes a vertex more than once, as rings that do not (OGC validity).

    Pieces of one component that touch diagonally inside a strip are separate there; once
    joined through another strip their rings can meet at that corner, and the loop between
    two visits of it is a ring of its own (a hole touching the shell, or the shell).
    """
    keys = ring[:, 0].astype(np.int64) * (1 << 32) + ring[:, 1]
    ordered = np.sort(keys)
    if not (ordered[1:] == ordered[:-1]).any():
        return [ring]
    del ordered
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if counts.max(initial=0) < 2:
        return [ring]
    repeated = counts[inverse] > 1
    loops: list[Coords] = []
    stack: list[int] = []
    where: dict[int, int] = {}  # repeated vertex -> its place on the stack
    for i, key in enumerate(inverse.tolist()):
        if repeated[i] and key in where:
            place = where[key]
            loops.append(ring[stack[place:]])
            for j in stack[place + 1 :]:
                where.pop(int(inverse[j]), None)
            del stack[place + 1 :]
            continue
        if repeated[i]:
            where[key] = len(stack)
        stack.append(i)
    loops.append(ring[stack])
    return loops
