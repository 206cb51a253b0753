"""Class names GIS show beside a COG: GDAL category names and a raster attribute table
(read back through rasterio's own GDAL), and a QGIS style with each class's colour."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segflow.io.classes import ClassInfo
from segflow.io.cog import export_cog
from segflow.io.gis_styles import pam_xml, qgis_style, style_paths
from tests.io.gdal_c import GDAL, band_classes
from tests.io.test_cog import COLORS, assert_valid_cog, input_image, labels_for, store_over

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

NAMES = ["water", "forest & woodland", "built-up <urban>", "bare soil"]
CLASSES = [ClassInfo(name=n, color=c) for n, c in zip(NAMES, COLORS, strict=True)]


@pytest.fixture
def cog(tmp_path: Path) -> Path:
    labels = labels_for((300, 420))
    sink = store_over(tmp_path, input_image(tmp_path, labels.shape), labels, classes=CLASSES)
    return export_cog(sink, tmp_path / "labels.tif")


@pytest.mark.skipif(GDAL is None, reason="rasterio's GDAL library was not found")
def test_gdal_reads_category_names_and_attribute_table(cog: Path) -> None:
    names, rows, usages = band_classes(cog)
    assert names == NAMES
    assert [r["Class"] for r in rows] == NAMES
    assert [int(r["Value"]) for r in rows] == [0, 1, 2, 3]
    assert [tuple(int(r[k]) for k in ("Red", "Green", "Blue")) for r in rows] == COLORS
    assert usages == [5, 2, 6, 7, 8, 9]  # min-max, name, red, green, blue, alpha


def test_the_cog_stays_valid_with_its_colour_table(cog: Path) -> None:
    assert_valid_cog(cog)
    with rasterio.open(cog) as ds:
        assert ds.colormap(1)[2] == (*COLORS[2], 255)
        assert ds.tags(1)["CLASS_1"] == "forest & woodland"


def test_qgis_style_has_a_palette_entry_per_class(cog: Path) -> None:
    aux, qml = style_paths(cog)
    assert aux == cog.with_name("labels.tif.aux.xml") and qml == cog.with_name("labels.qml")
    root = ET.parse(qml).getroot()
    assert root.tag == "qgis"
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == NAMES
    assert [e.get("value") for e in entries] == ["0", "1", "2", "3"]
    assert entries[1].get("color") == "#{:02x}{:02x}{:02x}".format(*COLORS[1])
    transparent = renderer.find("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert transparent is not None and transparent.get("min") == "255"


def test_builders_escape_names_and_keep_their_order() -> None:
    text = pam_xml(CLASSES, COLORS)
    assert "built-up &lt;urban&gt;" in text and "forest &amp; woodland" in text
    categories = [c.text for c in ET.fromstring(text).iter("Category")]
    assert categories == NAMES
    style = ET.fromstring(qgis_style(CLASSES, COLORS, 65535).split("\n", 1)[1])
    entry = style.find("pipe/rasterrenderer/rasterTransparency/singleValuePixelList/pixelListEntry")
    assert entry is not None and entry.get("max") == "65535"


def test_overwrite_replaces_the_styles_with_the_new_classes(tmp_path: Path, cog: Path) -> None:
    other = [ClassInfo(name=f"other {i}", color=c) for i, c in enumerate(COLORS)]
    labels = np.zeros((300, 420), np.uint8)
    sink = store_over(tmp_path / "b", input_image(tmp_path, labels.shape), labels, classes=other)
    export_cog(sink, cog, overwrite=True)
    aux, _ = style_paths(cog)
    assert next(c.text for c in ET.parse(aux).getroot().iter("Category")) == "other 0"
