"""Describe an output store or an input file as a JSON-ready dict, and render it with rich.

Stores: geometry, classes, completion (chunks done / total), pyramid levels and
provenance. Inputs: geometry, bands, dtype, nodata, block shape and (volumes)
orientation, read through the same lazy readers the engine uses (nothing is read
but headers).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from segflow.errors import ReaderError
from segflow.io.source import Geometry, RasterGeometry, VolumeGeometry
from segflow.io.zarr_levels import pyramid_levels
from segflow.io.zarr_meta import UNCERTAINTY_FORMULA, UNCERTAINTY_NODATA, UNCERTAINTY_SCALE
from segflow.io.zarr_sink import ZarrSink

# NIfTI xform codes (sform_code / qform_code)
XFORM_CODES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}


def inspect_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A store (a folder with zarr.json, or .zgroup in v2) or an input image, described."""
    target = Path(path).expanduser()
    if target.is_dir() and any((target / m).is_file() for m in ("zarr.json", ".zgroup")):
        return describe_store(target)
    return describe_input(target)


# --- stores -----------------------------------------------------------------------------------


def describe_store(store: str | os.PathLike[str] | ZarrSink) -> dict[str, Any]:
    sink = store if isinstance(store, ZarrSink) else ZarrSink.open(store)
    done, total = len(sink.done_chunks()), sink.chunks_total
    layout = sink.layout
    return {
        "type": "store",
        "path": str(sink.path),
        "kind": sink.kind,
        "complete": sink.is_complete,
        "shape": list(layout.spatial_shape),
        "chunk_shape": list(layout.chunk_shape),
        "zarr_format": layout.zarr_format,
        "chunks": {
            "done": done,
            "total": total,
            "grid": list(sink.chunk_grid_shape),
            "fraction": done / total if total else 1.0,
        },
        "labels": None
        if sink.labels_path is None
        else {
            "array": sink.labels_path,
            "dtype": sink.label_dtype.name,
            "nodata": sink.label_nodata,
        },
        "probabilities": None if layout.probabilities == "none" else layout.probabilities,
        "uncertainty": _uncertainty(sink),
        "classes": [
            {"value": v, "name": c.name, "color": list(c.color)} for v, c in enumerate(sink.classes)
        ],
        "geometry": describe_geometry(sink.geometry, layout.spatial_shape),
        "pyramid": [
            {"level": lv.level, "path": lv.path, "shape": list(lv.shape), "factor": list(lv.factor)}
            for lv in pyramid_levels(sink)
        ],
        "fingerprint": sink.fingerprint,
        "provenance": sink.attrs,
        "summary": sink.summary,
    }


def _uncertainty(sink: ZarrSink) -> dict[str, Any] | None:
    if sink.uncertainty_path is None:
        return None
    return {
        "array": sink.uncertainty_path,
        "dtype": "uint8",
        "scale": UNCERTAINTY_SCALE,
        "nodata": UNCERTAINTY_NODATA,
        "formula": UNCERTAINTY_FORMULA,
    }


# --- inputs -----------------------------------------------------------------------------------


def describe_input(path: str | os.PathLike[str]) -> dict[str, Any]:
    from segflow.io.open import open_source

    target = Path(path).expanduser()
    note = None
    try:
        source = open_source(target)
    except ReaderError as exc:
        if "4-D" not in str(exc):
            raise
        source = open_source(target, volumes_as_channels=True)  # describe every volume
        note = "4-D series: each volume is a channel (select one with --volume N)"
    info: dict[str, Any] = {
        "type": "input",
        "path": str(target),
        "kind": source.kind,
        "size_bytes": target.stat().st_size,
        "shape": list(source.spatial_shape),
        "channels": source.channels,
        "band_names": list(source.band_names),
        "dtype": str(source.dtype),
        "nodata": _json_float(source.nodata),
        "block_shape": list(source.block_shape),
        "geometry": describe_geometry(source.geometry, tuple(source.spatial_shape)),
    }
    if note:
        info["note"] = note
    close = getattr(source, "close", None)
    if callable(close):
        close()
    return info


# --- geometry ---------------------------------------------------------------------------------


def describe_geometry(geometry: Geometry, shape: tuple[int, ...]) -> dict[str, Any]:
    if isinstance(geometry, RasterGeometry):
        return _raster_geometry(geometry, shape)
    return _volume_geometry(geometry, shape)


def _raster_geometry(geometry: RasterGeometry, shape: tuple[int, ...]) -> dict[str, Any]:
    a, b, c, d, e, f = geometry.transform
    height, width = shape
    corners = [(c + a * u + b * v, f + d * u + e * v) for u in (0, width) for v in (0, height)]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    out: dict[str, Any] = {
        "georeferenced": geometry.georeferenced,
        "crs": None,
        "epsg": None,
        "units": None,
        "transform": list(geometry.transform),
        "resolution": [math.hypot(a, d), math.hypot(b, e)],
        "rotated": b != 0.0 or d != 0.0,
        "bounds": [min(xs), min(ys), max(xs), max(ys)],
    }
    if geometry.crs_wkt is not None:
        import pyproj

        try:
            crs = pyproj.CRS.from_wkt(geometry.crs_wkt)
        except pyproj.exceptions.CRSError:
            out["crs"] = geometry.crs_wkt[:80]
        else:
            out["crs"] = crs.name
            out["epsg"] = crs.to_epsg()
            out["units"] = crs.axis_info[0].unit_name if crs.axis_info else None
            out["geographic"] = crs.is_geographic
    return out


def _volume_geometry(geometry: VolumeGeometry, shape: tuple[int, ...]) -> dict[str, Any]:
    affine = np.asarray(geometry.affine, dtype=np.float64)
    m = np.abs(affine[:3, :3]) / np.maximum(np.abs(affine[:3, :3]).max(axis=0), 1e-12)
    return {
        "orientation": "".join(geometry.orientation),
        "zooms_mm": list(geometry.zooms),
        "extent_mm": [float(n * z) for n, z in zip(shape, geometry.zooms, strict=True)],
        "affine": affine.tolist(),
        "oblique": bool(((m > 1e-3) & (m < 1 - 1e-9)).any()),
        "sform_code": geometry.sform_code,
        "sform": XFORM_CODES.get(geometry.sform_code, str(geometry.sform_code)),
        "qform_code": geometry.qform_code,
        "qform": XFORM_CODES.get(geometry.qform_code, str(geometry.qform_code)),
        "voxel_volume_mm3": float(abs(np.linalg.det(affine[:3, :3]))),
    }


def _json_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else str(value)


# --- rendering --------------------------------------------------------------------------------


def render(info: dict[str, Any], console: Any = None) -> None:
    """Print a description made by :func:`inspect_path` as rich tables."""
    from rich.console import Console
    from rich.table import Table

    out = console or Console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    if info["type"] == "store":
        chunks = info["chunks"]
        state = "complete" if info["complete"] else "incomplete"
        grid.add_row("store", info["path"])
        grid.add_row("kind", info["kind"])
        grid.add_row(
            "state",
            f"{state}: {chunks['done']} / {chunks['total']} chunks written "
            f"({100 * chunks['fraction']:.1f} %)",
        )
        grid.add_row(
            "shape", _shape(info["shape"]) + f" in chunks of {_shape(info['chunk_shape'])}"
        )
        labels = info["labels"]
        if labels:
            grid.add_row(
                "labels", f"{labels['dtype']} array '{labels['array']}', nodata {labels['nodata']}"
            )
        grid.add_row("probabilities", str(info["probabilities"] or "not stored"))
        uncertainty = info.get("uncertainty")
        if uncertainty:
            grid.add_row(
                "uncertainty",
                f"uint8 array '{uncertainty['array']}': normalized entropy of the class "
                "probabilities x 254, nodata 255",
            )
        if info["pyramid"]:
            grid.add_row("pyramid", ", ".join(_shape(lv["shape"]) for lv in info["pyramid"]))
    else:
        grid.add_row("input", info["path"])
        grid.add_row("kind", info["kind"])
        grid.add_row("shape", _shape(info["shape"]) + f", {info['channels']} channel(s)")
        grid.add_row("bands", ", ".join(info["band_names"]))
        grid.add_row("dtype", info["dtype"])
        grid.add_row("nodata", str(info["nodata"]))
        grid.add_row("blocks", _shape(info["block_shape"]))
        if info.get("note"):
            grid.add_row("note", info["note"])
    for key, value in _geometry_rows(info["geometry"]):
        grid.add_row(key, value)
    out.print(grid)
    if info.get("classes"):
        table = Table(title="classes", title_justify="left")
        table.add_column("value", justify="right")
        table.add_column("name")
        table.add_column("colour")
        for entry in info["classes"]:
            r, g, b = entry["color"]
            table.add_row(
                str(entry["value"]), entry["name"], f"[on rgb({r},{g},{b})]    [/] {r},{g},{b}"
            )
        out.print(table)
    if info.get("provenance"):
        from rich.pretty import Pretty

        out.print("[bold cyan]provenance[/]")
        out.print(Pretty(info["provenance"], max_depth=3, max_string=120))


def _geometry_rows(geometry: dict[str, Any]) -> list[tuple[str, str]]:
    if "orientation" in geometry:
        rows = [
            (
                "orientation",
                geometry["orientation"] + ("  (oblique)" if geometry["oblique"] else ""),
            ),
            ("voxel size", " x ".join(f"{z:g}" for z in geometry["zooms_mm"]) + " mm"),
            (
                "sform / qform",
                f"{geometry['sform']} ({geometry['sform_code']}) / "
                f"{geometry['qform']} ({geometry['qform_code']})",
            ),
        ]
        rows += [
            ("affine" if n == 0 else "", "  ".join(f"{v: .4g}" for v in row))
            for n, row in enumerate(geometry["affine"][:3])
        ]
        return rows
    crs = geometry["crs"] or "none (pixel coordinates)"
    if geometry.get("epsg"):
        crs += f"  (EPSG:{geometry['epsg']})"
    res = " x ".join(f"{v:g}" for v in geometry["resolution"])
    return [
        ("crs", crs),
        ("resolution", res + (f" {geometry['units']}" if geometry.get("units") else "")),
        ("transform", ", ".join(f"{v:g}" for v in geometry["transform"])),
        ("bounds", ", ".join(f"{v:.6g}" for v in geometry["bounds"])),
    ]


def _shape(shape: list[int]) -> str:
    return " x ".join(str(n) for n in shape)
