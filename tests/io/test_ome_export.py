"""OME-Zarr export for OME-only viewers: world coordinates of voxels (OME scale and
translation) agree with nibabel's for RAS, LPS, LAS and LIA inputs, the image is the
labels' parent, and ome-zarr-models validates both."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr

from segflow.errors import ConfigError, OutputError
from segflow.io.nifti import NiftiSource
from segflow.io.ome_export import export_ome_zarr, plan_turn
from segflow.io.source import VolumeGeometry
from segflow.io.zarr_sink import OutputLayout, ZarrSink
from segflow.models.meta import ClassInfo
from tests.conftest import write_nifti
from tests.io.ome import as_written_before_zyx, valid_image_group, valid_label_group

SHAPE = (6, 7, 8)
ZOOMS = (1.0, 1.5, 2.0)
ORIGIN = (-40.0, 25.0, 10.5)
CLASSES = [ClassInfo(name=f"class {i}", color=(40 * i, 30, 200 - 40 * i)) for i in range(5)]


def axis_aligned(codes: str) -> np.ndarray:
    """An affine whose voxel axes point along ``codes`` (e.g. "LIA"), RAS+ world."""
    ornt = nib.orientations.axcodes2ornt(tuple(codes))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for voxel, (world, sign) in enumerate(ornt):
        affine[int(world), voxel] = sign * ZOOMS[voxel]
    affine[:3, 3] = ORIGIN
    return affine


def oblique() -> np.ndarray:
    angle = np.radians(12.0)
    rot = np.array(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    )
    affine = axis_aligned("LPS")
    affine[:3, :3] = rot @ affine[:3, :3]
    return affine


def make_pair(tmp_path: Path, affine: np.ndarray) -> tuple[Path, np.ndarray, np.ndarray]:
    """A NIfTI whose voxels hold their own index and a finished label store over it."""
    i, j, k = np.indices(SHAPE)
    image = (i * 10000 + j * 100 + k).astype(np.int32)
    path = write_nifti(tmp_path / "scan.nii.gz", image, affine)
    source = NiftiSource(path)
    labels = ((i + 2 * j + 3 * k) % 5).astype(np.uint8)
    labels[0, 0, :3] = 255
    sink = ZarrSink.create(
        tmp_path / "scan.zarr",
        OutputLayout(SHAPE, (4, 4, 4), len(CLASSES)),
        source.geometry,
        CLASSES,
        {"input": {"path": str(path)}},
        "fp",
    )
    for index in np.ndindex(*sink.chunk_grid_shape):
        region = sink.chunk_region(index)
        sink.write_chunk(index, labels[region], None)
    sink.finalize({})
    return tmp_path / "scan.zarr", image, labels


def ome_world(ome: dict, shape: tuple[int, ...]) -> np.ndarray:
    """World (z, y, x) of every voxel as an OME-only viewer computes it: scale * index + translation."""
    (ms,) = ome["multiscales"]
    scale, translation = (
        t[k]
        for t, k in zip(
            ms["datasets"][0]["coordinateTransformations"], ("scale", "translation"), strict=True
        )
    )
    index = np.indices(shape).reshape(3, -1).T
    return index * np.array(scale[-3:]) + np.array(translation[-3:])


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LAS", "LIA"])
def test_viewer_world_coordinates_agree_with_nibabel(tmp_path: Path, codes: str) -> None:
    affine = axis_aligned(codes)
    store, image, labels = make_pair(tmp_path, affine)
    out = export_ome_zarr(store, tmp_path / "view.zarr")
    root = zarr.open_group(out, mode="r")
    turned_image = np.asarray(root["0"][...])
    turned_labels = np.asarray(root["labels/labels/0"][...])
    for ome, data, original in (
        (root.attrs["ome"], turned_image, image),
        (root["labels/labels"].attrs["ome"], turned_labels, labels),
    ):
        zyx = ome_world(ome, data.shape)
        ras = zyx[:, ::-1]
        voxel = nib.affines.apply_affine(np.linalg.inv(affine), ras)
        assert np.allclose(voxel, np.rint(voxel), atol=1e-9)  # the same voxel centres
        i, j, k = np.rint(voxel).astype(int).T
        np.testing.assert_array_equal(data.reshape(-1), original[i, j, k])
        (ms,) = ome["multiscales"]
        assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
        assert {a["unit"] for a in ms["axes"]} == {"millimeter"}
        assert all(s > 0 for s in ms["datasets"][0]["coordinateTransformations"][0]["scale"])


def test_ome_zarr_models_validate_image_and_labels_with_parent(tmp_path: Path) -> None:
    store, _, _ = make_pair(tmp_path, axis_aligned("LPS"))
    export_ome_zarr(store, tmp_path / "view.zarr")
    out = export_ome_zarr(store, tmp_path / "view.zarr", overwrite=True)
    image = valid_image_group(out)
    label = valid_label_group(out, "labels/labels")
    assert image.attributes.ome.multiscales[0].datasets[0].path == "0"
    root = zarr.open_group(out, mode="r")
    assert root["labels"].attrs["ome"]["labels"] == ["labels"]
    source = root["labels/labels"].attrs["ome"]["image-label"]["source"]["image"]
    assert (out / "labels" / "labels" / source).resolve() == out.resolve()  # the parent image
    assert label.attributes.ome.image_label is not None
    names = [p["name"] for p in root["labels/labels"].attrs["ome"]["image-label"]["properties"]]
    assert names[:5] == [c.name for c in CLASSES]


def test_oblique_scans_record_the_exact_affine_and_the_rotation_left_out(tmp_path: Path) -> None:
    affine = oblique()
    store, image, _ = make_pair(tmp_path, affine)
    out = export_ome_zarr(store, tmp_path / "view.zarr")
    note = zarr.open_group(out, mode="r").attrs["segflow"]
    assert note["residual_rotation_degrees"] == pytest.approx(12.0)
    turned = np.asarray(zarr.open_group(out, mode="r")["0"][...])
    exact = np.array(note["affine_zyx"])
    index = np.array([2, 3, 4, 1.0])
    ras = exact @ index
    voxel = np.rint(np.linalg.inv(affine) @ ras).astype(int)
    assert turned[2, 3, 4] == image[tuple(voxel[:3])]


def test_turn_of_a_ras_file_is_its_axes_reversed() -> None:
    g = VolumeGeometry(
        affine=tuple(tuple(float(v) for v in row) for row in axis_aligned("RAS")),
        sform_code=1,
        qform_code=1,
        orientation=("R", "A", "S"),
        zooms=ZOOMS,
    )
    turn = plan_turn(g, SHAPE)
    assert turn.axes == (2, 1, 0) and turn.flips == (False, False, False)
    assert turn.scale == [2.0, 1.5, 1.0] and turn.translation == [10.5, 25.0, -40.0]
    assert turn.residual_degrees == 0.0


def test_mistakes_are_one_line(tmp_path: Path) -> None:
    store, _, _ = make_pair(tmp_path, axis_aligned("RAS"))
    (tmp_path / "view.zarr").mkdir()
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        export_ome_zarr(store, tmp_path / "view.zarr")
    other = write_nifti(tmp_path / "other.nii.gz", np.zeros((3, 3, 3), np.int16), np.eye(4))
    with pytest.raises(ConfigError, match="is not the volume"):
        export_ome_zarr(store, tmp_path / "v2.zarr", image=other)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a zarr store; refusing to delete it"):
        export_ome_zarr(store, tmp_path / "notes", overwrite=True)
    (tmp_path / "scan.nii.gz").unlink()
    with pytest.raises(ConfigError, match="pass it with --input"):
        export_ome_zarr(store, tmp_path / "v3.zarr")
    assert not (tmp_path / "v2.zarr").exists() and not (tmp_path / "v3.zarr").exists()
    json.dumps(zarr.open_group(store, mode="r").attrs["segflow"])  # the store is untouched


@pytest.mark.parametrize(("codes", "placed"), [("RAS", True), ("LPS", False), ("LIA", False)])
def test_the_stores_own_ome_block_places_voxels_only_for_ras_grids(
    tmp_path: Path, codes: str, placed: bool
) -> None:
    """What the README says OME-only viewers see in the store itself: its z, y, x are the
    voxel axes i, j, k with positive scales, so only a grid along +x, +y, +z lands right."""
    affine = axis_aligned(codes)
    store, _, labels = make_pair(tmp_path, affine)
    valid_label_group(store)
    ome = zarr.open_group(store, mode="r").attrs["ome"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["z", "y", "x"]
    viewer = ome_world(ome, labels.shape)  # per voxel, in the store's (file's) voxel order
    nibabel = nib.affines.apply_affine(affine, np.indices(labels.shape).reshape(3, -1).T)
    assert np.allclose(viewer, nibabel) is placed


def test_stores_with_axes_i_j_k_export_for_viewers(tmp_path: Path) -> None:
    store, _, _ = make_pair(tmp_path, axis_aligned("LPS"))
    fresh = export_ome_zarr(store, tmp_path / "fresh.zarr")
    as_written_before_zyx(store)
    old = export_ome_zarr(store, tmp_path / "old.zarr")
    valid_image_group(old)
    valid_label_group(old, "labels/labels")
    a, b = zarr.open_group(fresh, mode="r"), zarr.open_group(old, mode="r")
    np.testing.assert_array_equal(a["labels/labels/0"][...], b["labels/labels/0"][...])
    (ms_a,), (ms_b,) = (g["labels/labels"].attrs["ome"]["multiscales"] for g in (a, b))
    assert (ms_a["axes"], ms_a["datasets"]) == (ms_b["axes"], ms_b["datasets"])
