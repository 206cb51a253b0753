"""Metadata builders: exact geometry round trips, CF attributes, OME-Zarr 0.5 structure."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from rasterio.crs import CRS

from segflow.io import zarr_meta as meta
from segflow.io.classes import ClassInfo
from segflow.io.source import RasterGeometry, VolumeGeometry
from tests.io.ome import valid_image_attrs, valid_label_attrs

# Floats chosen to break naive formatting (%g, str of float32, 6 significant digits).
OBLIQUE_LIA = VolumeGeometry(
    affine=(
        (-0.9986295347545738, 0.0523359562429438, 0.0, 127.49999999999997),
        (0.0, 0.0, -1.0000000000000002, 145.1),
        (0.0523359562429438, 0.9986295347545738, 0.0, -109.33333333333333),
        (0.0, 0.0, 0.0, 1.0),
    ),
    sform_code=2,
    qform_code=1,
    orientation=("L", "I", "A"),
    zooms=(1.0, 1.0000000000000002, 1.0),
)
UTM = RasterGeometry(
    crs_wkt=CRS.from_epsg(32618).to_wkt(),
    transform=(300.0379266750948, 0.0, 101985.0, 0.0, -300.041782729805, 2826915.0),
    georeferenced=True,
)
CLASSES = (ClassInfo(name="water", color=(0, 0, 255)), ClassInfo(name="bare soil", color=(9, 8, 7)))


def json_roundtrip(value: object) -> object:
    return json.loads(json.dumps(value, allow_nan=False))


@pytest.mark.parametrize(
    "geometry",
    [
        UTM,
        RasterGeometry(None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), georeferenced=False),
        RasterGeometry(None, (0.1, 0.02, -7.3, 0.03, -0.1, 1e-9), georeferenced=True),
        OBLIQUE_LIA,
    ],
    ids=["utm", "no-crs", "rotated", "oblique-volume"],
)
def test_geometry_attrs_roundtrip_exactly_through_json(
    geometry: RasterGeometry | VolumeGeometry,
) -> None:
    attrs = json_roundtrip(meta.geometry_to_attrs(geometry))
    assert isinstance(attrs, dict)
    assert meta.geometry_from_attrs(attrs) == geometry


def test_geometry_from_attrs_rejects_malformed() -> None:
    attrs = meta.geometry_to_attrs(UTM)
    with pytest.raises(ValueError, match="6"):
        meta.geometry_from_attrs({**attrs, "transform": [1.0, 2.0]})
    with pytest.raises(ValueError, match="incomplete"):
        meta.geometry_from_attrs({"type": "volume", "zooms": [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match="unknown"):
        meta.geometry_from_attrs({"type": "mesh"})


def test_jsonable_makes_strict_json() -> None:
    value = {
        "path": Path("/data/in.tif"),
        "shape": (3, np.int64(4)),
        "scale": np.float32(0.5),
        "nan": float("nan"),
        "inf": -math.inf,
        "array": np.arange(3, dtype=np.uint8),
        "set": {"b", "a"},
        "model": ClassInfo(name="x"),
        1: None,
    }
    out = meta.jsonable(value)
    json.dumps(out, allow_nan=False)  # strict JSON
    assert out == {
        "path": "/data/in.tif",
        "shape": [3, 4],
        "scale": 0.5,
        "nan": "NaN",
        "inf": "-Infinity",
        "array": [0, 1, 2],
        "set": ["a", "b"],
        "model": {"name": "x", "color": [0, 0, 0]},
        "1": None,
    }


def test_classes_roundtrip_and_flag_meanings() -> None:
    attrs = json_roundtrip(meta.classes_to_attrs(CLASSES))
    assert isinstance(attrs, list)
    assert meta.classes_from_attrs(attrs) == CLASSES
    assert meta.flag_meanings(CLASSES) == "water bare_soil"


def test_geotransform_is_gdal_order_and_exact() -> None:
    text = meta.geotransform_string(UTM.transform)
    c, a, b, f, d, e = (float(v) for v in text.split())
    assert (a, b, c, d, e, f) == UTM.transform


def test_grid_mapping_attrs_with_and_without_crs() -> None:
    attrs = meta.cf_grid_mapping_attrs(UTM.crs_wkt, UTM.transform)
    assert attrs["crs_wkt"] == attrs["spatial_ref"] == UTM.crs_wkt
    assert attrs["grid_mapping_name"] == "transverse_mercator"
    assert attrs["GeoTransform"] == meta.geotransform_string(UTM.transform)
    json.dumps(attrs, allow_nan=False)
    assert meta.cf_grid_mapping_attrs(None, UTM.transform) == {
        "GeoTransform": meta.geotransform_string(UTM.transform)
    }


def test_xy_coordinate_attrs() -> None:
    y, x = meta.cf_xy_coordinate_attrs(CRS.from_epsg(4326).to_wkt())
    assert (y["standard_name"], y["units"], y["axis"]) == ("latitude", "degrees_north", "Y")
    assert (x["standard_name"], x["units"], x["axis"]) == ("longitude", "degrees_east", "X")
    y, x = meta.cf_xy_coordinate_attrs(UTM.crs_wkt)
    assert (y["standard_name"], x["standard_name"]) == (
        "projection_y_coordinate",
        "projection_x_coordinate",
    )
    y, x = meta.cf_xy_coordinate_attrs(None)
    assert (y["axis"], x["axis"]) == ("Y", "X")


@pytest.mark.parametrize(
    "transform",
    [
        UTM.transform,
        (30.0, 0.0, 399960.0, 0.0, -30.0, 4200000.0),
        (0.000269494585236, 0.0, -74.0042, 0.0, -0.000269494585236, 40.7549),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    ],
)
def test_pixel_centres_give_the_origin_back(transform: tuple[float, ...]) -> None:
    a, _, c, _, e, f = transform
    y, x = meta.pixel_center_coordinates(transform, (5, 7))
    assert x.shape == (7,) and y.shape == (5,)
    np.testing.assert_allclose(x, c + (np.arange(7) + 0.5) * a)
    np.testing.assert_allclose(y, f + (np.arange(5) + 0.5) * e)
    # what rioxarray computes from the coordinates:
    assert x[0] - a / 2.0 == c
    assert y[0] - e / 2.0 == f


def test_label_attrs_carry_nodata_as_cf_fill_value() -> None:
    attrs = meta.cf_label_attrs(CLASSES, 255)
    assert attrs["_FillValue"] == 255 and "nodata" not in attrs
    assert meta.volume_label_attrs(65535)["_FillValue"] == 65535
    assert attrs["grid_mapping"] == attrs["coordinates"] == "spatial_ref"
    assert attrs["flag_values"] == [0, 1]


def test_ome_label_image_structure() -> None:
    ome = json_roundtrip(meta.ome_label_image_attrs("scan", OBLIQUE_LIA, CLASSES, 255))
    assert isinstance(ome, dict)
    valid_label_attrs(ome)
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert ms["name"] == "scan"
    # array axes 0, 1, 2 (the file's voxel axes i, j, k) under the names OME-only tools expect
    assert ms["axes"] == [{"name": n, "type": "space", "unit": "millimeter"} for n in "zyx"]
    (ds,) = ms["datasets"]
    assert ds == {
        "path": "0",
        "coordinateTransformations": [
            {"type": "scale", "scale": list(OBLIQUE_LIA.zooms)},
            {
                "type": "translation",
                "translation": [127.49999999999997, 145.1, -109.33333333333333],
            },
        ],
    }
    label = ome["image-label"]
    assert label["version"] == "0.5"
    assert label["colors"][:2] == [
        {"label-value": 0, "rgba": [0, 0, 255, 255]},
        {"label-value": 1, "rgba": [9, 8, 7, 255]},
    ]
    assert label["colors"][-1] == {"label-value": 255, "rgba": [0, 0, 0, 0]}
    assert label["properties"][:2] == [
        {"label-value": 0, "name": "water"},
        {"label-value": 1, "name": "bare soil"},
    ]


def test_ome_probability_image_has_channel_axis_first() -> None:
    ome = meta.ome_probability_image_attrs("scan probabilities", OBLIQUE_LIA)
    valid_image_attrs(ome)
    (ms,) = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["axes"][0] == {"name": "c", "type": "channel"}
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, *OBLIQUE_LIA.zooms]


def test_ome_pyramid_levels_can_be_appended() -> None:
    ome = meta.ome_label_image_attrs("scan", OBLIQUE_LIA, CLASSES, 255)
    level0 = ome["multiscales"][0]["datasets"][0]
    scale = [2.0 * z for z in OBLIQUE_LIA.zooms]
    ome["multiscales"][0]["datasets"].append(
        meta.ome_dataset("1", scale, level0["coordinateTransformations"][1]["translation"])
    )
    valid_label_attrs(ome)
    ome["multiscales"][0]["datasets"].reverse()
    with pytest.raises(ValidationError, match="scale"):
        valid_label_attrs(ome)  # levels go from finest to coarsest


def _broken(change: str) -> dict:
    ome = copy.deepcopy(meta.ome_label_image_attrs("scan", OBLIQUE_LIA, CLASSES, 255))
    ms = ome["multiscales"][0]
    if change == "version":
        ome["version"] = "0.4"
    elif change == "axis-order":
        ms["axes"] = [*ms["axes"], {"name": "c", "type": "channel"}]
    elif change == "axis-names":
        ms["axes"][1]["name"] = ms["axes"][0]["name"]  # a duplicate
    elif change == "translation-first":
        ms["datasets"][0]["coordinateTransformations"].reverse()
    elif change == "scale-length":
        ms["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0, 1.0]
    elif change == "duplicate-label":
        ome["image-label"]["colors"][1]["label-value"] = 0
    elif change == "rgba":
        ome["image-label"]["colors"][0]["rgba"] = [0, 0, 256]
    return ome


@pytest.mark.parametrize(
    "change",
    [
        "version",
        "axis-order",
        "axis-names",
        "translation-first",
        "scale-length",
        "duplicate-label",
        "rgba",
    ],
)
def test_broken_ome_metadata_is_rejected(change: str) -> None:
    with pytest.raises(ValidationError):
        valid_label_attrs(_broken(change))


def test_stored_axis_names_are_read_for_current_and_older_stores() -> None:
    ome = meta.ome_label_image_attrs("scan", OBLIQUE_LIA, CLASSES, 255)
    assert meta.stored_volume_axes(ome) == ("z", "y", "x")
    older = copy.deepcopy(ome)  # stores written before named the voxel axes i, j, k
    older["multiscales"][0]["axes"] = meta.ome_space_axes(meta.LEGACY_VOLUME_AXES)
    valid_label_attrs(older)
    assert meta.stored_volume_axes(older) == ("i", "j", "k")
    probabilities = meta.ome_probability_image_attrs("scan probabilities", OBLIQUE_LIA)
    assert meta.stored_volume_axes(probabilities) == ("z", "y", "x")  # the channel is skipped


@pytest.mark.parametrize(
    "ome",
    [
        {},
        {"multiscales": []},
        {"multiscales": [{"axes": meta.ome_space_axes(("x", "y", "z"))}]},
    ],
)
def test_unexpected_stored_axis_names_are_a_clear_error(ome: dict) -> None:
    with pytest.raises(ValueError, match="OME"):
        meta.stored_volume_axes(ome)
