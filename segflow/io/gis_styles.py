"""Class names and colours of a label raster in the files GIS read beside it.

- ``<file>.aux.xml``: GDAL's PAM sidecar with the band's category names and a thematic
  raster attribute table (value, class, red, green, blue, alpha). GDAL, and so QGIS,
  ArcGIS and rasterio's GDAL, read it with the raster; GeoTIFF itself has no place for
  either (GDAL keeps both in PAM for every GeoTIFF). rasterio has no API to write them,
  so the XML is written here in GDAL's documented PAM schema.
- ``<file>.qml``: a QGIS layer style, a paletted renderer with one entry per class
  (its colour and name); QGIS applies it when the raster is added.

Both are pure builders plus one writer; nothing here opens a raster.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from segflow.io.classes import ClassInfo

QGIS_VERSION = "3.34.0"  # the long-term release whose style schema this follows

# GDAL's GDALRATFieldType and GDALRATFieldUsage values, as PAM stores them
_INTEGER, _STRING = 0, 2
_USAGE_GENERIC, _USAGE_NAME, _USAGE_MINMAX = 0, 2, 5
_USAGE_RED, _USAGE_GREEN, _USAGE_BLUE, _USAGE_ALPHA = 6, 7, 8, 9
RAT_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("Value", _INTEGER, _USAGE_MINMAX),
    ("Class", _STRING, _USAGE_NAME),
    ("Red", _INTEGER, _USAGE_RED),
    ("Green", _INTEGER, _USAGE_GREEN),
    ("Blue", _INTEGER, _USAGE_BLUE),
    ("Alpha", _INTEGER, _USAGE_ALPHA),
)


def pam_xml(classes: Sequence[ClassInfo], colors: Sequence[tuple[int, int, int]]) -> str:
    """GDAL PAM XML for band 1: category names (index = pixel value) and a thematic RAT."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    names = ET.SubElement(band, "CategoryNames")
    for c in classes:
        ET.SubElement(names, "Category").text = c.name
    table = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for index, (name, kind, usage) in enumerate(RAT_FIELDS):
        field = ET.SubElement(table, "FieldDefn", index=str(index))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for value, (c, rgb) in enumerate(zip(classes, colors, strict=True)):
        row = ET.SubElement(table, "Row", index=str(value))
        for cell in (value, c.name, *rgb, 255):
            ET.SubElement(row, "F").text = str(cell)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def qgis_style(
    classes: Sequence[ClassInfo], colors: Sequence[tuple[int, int, int]], nodata: int
) -> str:
    """A QGIS ``.qml`` layer style: a paletted renderer labelling each class value."""
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        type="paletted",
        band="1",
        opacity="1",
        alphaBand="-1",
        nodataColor="",
    )
    transparency = ET.SubElement(renderer, "rasterTransparency")
    single = ET.SubElement(transparency, "singleValuePixelList")
    ET.SubElement(
        single, "pixelListEntry", min=str(nodata), max=str(nodata), percentTransparent="100"
    )
    ET.SubElement(renderer, "minMaxOrigin")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, (c, (r, g, b)) in enumerate(zip(classes, colors, strict=True)):
        ET.SubElement(
            palette,
            "paletteEntry",
            value=str(value),
            color=f"#{r:02x}{g:02x}{b:02x}",
            alpha="255",
            label=c.name,
        )
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n{body}\n"


def style_paths(raster: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Where GDAL looks for the PAM sidecar and QGIS for the default style of ``raster``."""
    path = Path(raster)
    return path.with_name(f"{path.name}.aux.xml"), path.with_suffix(".qml")


def write_styles(
    raster: str | os.PathLike[str],
    classes: Sequence[ClassInfo],
    colors: Sequence[tuple[int, int, int]],
    nodata: int,
) -> tuple[Path, Path]:
    """Write the ``.aux.xml`` and ``.qml`` of ``raster``; returns their paths."""
    aux, qml = style_paths(raster)
    aux.write_text(pam_xml(classes, colors), encoding="utf-8")
    qml.write_text(qgis_style(classes, colors, nodata), encoding="utf-8")
    return aux, qml
