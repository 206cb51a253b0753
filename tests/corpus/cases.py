"""Generators of bad inputs, options, model files, specs and outputs for ``segflow run``.

Each case writes what it needs into a folder and returns the command-line arguments
(after ``segflow run``) and the text its one-line error must contain.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.conftest import save, textured, threshold_model, write_nifti, write_tif

Make = Callable[[Path], list[str]]


@dataclass(frozen=True)
class Case:
    name: str
    make: Make
    message: str  # what the one stderr line must say
    needs_non_root: bool = False  # a permission that root (who may write anywhere) ignores


def _model(root: Path) -> Path:
    path = root / "m.safetensors"
    if not path.exists():
        save(threshold_model(100.0, spatial_dims=2), path)
    return path


def _model3d(root: Path) -> Path:
    path = root / "m3.safetensors"
    if not path.exists():
        save(threshold_model(100.0, spatial_dims=3), path)
    return path


def _scene(root: Path) -> Path:
    path = root / "scene.tif"
    if not path.exists():
        write_tif(path, textured((48, 40), 1), tile=None)
    return path


def _run(image: Path, model: Path, root: Path, *extra: str) -> list[str]:
    return [str(image), "-m", str(model), "-o", str(root / "out.zarr"), "--no-flow", *extra]


def _with_scene(*extra: str) -> Make:
    return lambda root: _run(_scene(root), _model(root), root, *extra)


def _bytes(name: str, content: bytes, model: Callable[[Path], Path] = _model) -> Make:
    def make(root: Path) -> list[str]:
        path = root / name
        path.write_bytes(content)
        return _run(path, model(root), root)

    return make


def _truncated_tif(root: Path) -> list[str]:
    path = root / "cut.tif"
    path.write_bytes(_scene(root).read_bytes()[:300])
    return _run(path, _model(root), root)


def _nifti(name: str, data: np.ndarray, affine: np.ndarray | None = None) -> Make:
    def make(root: Path) -> list[str]:
        path = write_nifti(root / name, data, np.eye(4) if affine is None else affine)
        return _run(path, _model3d(root), root)

    return make


def _truncated_nifti(root: Path) -> list[str]:
    noise = np.random.default_rng(0).integers(0, 1000, (32, 32, 32)).astype(np.int16)
    whole = write_nifti(root / "whole.nii.gz", noise, np.eye(4))  # noise: it cannot compress away
    path = root / "cut.nii.gz"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return _run(path, _model3d(root), root)


def _raw_nifti(path: Path, shape: tuple[int, ...], srow: float | None = None) -> Path:
    """A .nii written by hand: a header that may lie, then 1000 bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    if srow is not None:
        header["sform_code"], header["qform_code"] = 1, 0
        for row in ("srow_x", "srow_y", "srow_z"):
            header[row] = [srow] * 4
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
    return path


def _huge_header_nifti(root: Path) -> list[str]:
    path = _raw_nifti(root / "huge.nii", (30000, 30000, 30000))
    return _run(path, _model3d(root), root)


def _nan_affine_nifti(root: Path) -> list[str]:
    path = _raw_nifti(root / "nan.nii", (8, 8, 8), srow=float("nan"))
    return _run(path, _model3d(root), root)


def _four_d_nifti(root: Path) -> list[str]:
    path = write_nifti(root / "four.nii.gz", np.zeros((8, 8, 8, 3), np.int16), np.eye(4))
    return _run(path, _model3d(root), root)


def _nan_tif(root: Path) -> list[str]:
    path = write_tif(root / "nan.tif", np.full((1, 32, 32), np.nan, np.float32), tile=None)
    return _run(path, _model(root), root)


def _wrong_bands(root: Path) -> list[str]:
    path = write_tif(root / "rgb.tif", textured((32, 32), 3), tile=None)
    return _run(path, _model(root), root)


def _model_file(name: str, content: bytes) -> Make:
    def make(root: Path) -> list[str]:
        model = root / name
        model.write_bytes(content)
        return _run(_scene(root), model, root)

    return make


def _truncated_model(root: Path) -> list[str]:
    model = root / "cut.safetensors"
    model.write_bytes(_model(root).read_bytes()[:200])
    return _run(_scene(root), model, root)


def _safetensors_with_meta(meta: str) -> Make:
    def make(root: Path) -> list[str]:
        header = json.dumps({"__metadata__": {"segflow_meta": meta}}).encode()
        model = root / "meta.safetensors"
        model.write_bytes(struct.pack("<Q", len(header)) + header)
        return _run(_scene(root), model, root)

    return make


def _pickle_model(root: Path) -> list[str]:
    import pickle

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pickle payload ran",))

    model = root / "evil.pt"
    model.write_bytes(pickle.dumps(Payload()))
    return _run(_scene(root), model, root)


def _spec(text: str) -> Make:
    def make(root: Path) -> list[str]:
        spec = root / "spec.yaml"
        spec.write_text(text)
        return _run(_scene(root), _model(root), root, "--spec", str(spec))

    return make


BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
)


def _output_inside_a_file(root: Path) -> list[str]:
    (root / "file").write_text("x")
    return [
        str(_scene(root)),
        "-m",
        str(_model(root)),
        "-o",
        str(root / "file" / "o.zarr"),
        "--no-flow",
    ]


def _output_is_the_input(root: Path) -> list[str]:
    scene = _scene(root)
    return [str(scene), "-m", str(_model(root)), "-o", str(scene), "--no-flow"]


def _existing_output(root: Path) -> list[str]:
    (root / "out.zarr").mkdir()
    (root / "out.zarr" / "zarr.json").write_text("{}")
    return _run(_scene(root), _model(root), root)


def _empty_folder(root: Path) -> list[str]:
    (root / "empty").mkdir()
    return _run(root / "empty", _model(root), root)


def _symlink_loop(root: Path) -> list[str]:
    (root / "a.tif").symlink_to(root / "b.tif")
    (root / "b.tif").symlink_to(root / "a.tif")
    return _run(root / "a.tif", _model(root), root)


def _dangling_symlink(root: Path) -> list[str]:
    (root / "gone.tif").symlink_to(root / "moved-away.tif")
    return _run(root / "gone.tif", _model(root), root)


def _folder_of_non_images(root: Path) -> list[str]:
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an image\n")
    return _run(root / "notes", _model(root), root)


def _empty_manifest(root: Path) -> list[str]:
    (root / "list.txt").write_text("")
    return _run(root / "list.txt", _model(root), root)


def _newline_in_name(root: Path) -> list[str]:
    return _run(root / "scene.tif\nother.tif", _model(root), root)


def _remote(url: str) -> Make:
    def make(root: Path) -> list[str]:
        args = _run(_scene(root), _model(root), root)
        return [url, *args[1:]]

    return make


def _output(name: Callable[[Path], Path]) -> Make:
    return lambda root: [
        str(_scene(root)),
        "-m",
        str(_model(root)),
        "-o",
        str(name(root)),
        "--no-flow",
    ]


def _output_is_a_file_named_zarr(root: Path) -> Path:
    (root / "out.zarr").write_text("a file, not a store")
    return root / "out.zarr"


def _read_only_folder(root: Path) -> Path:
    folder = root / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder / "o.zarr"


def _model_folder(root: Path) -> list[str]:
    (root / "models").mkdir()
    (root / "models" / "notes.txt").write_text("no model here")
    return _run(_scene(root), root / "models", root)


def _exported(sidecar: str | None, *, classes: int = 2, module_ok: bool = True) -> Make:
    """A TorchScript model file with the sidecar text given (or the right one, or none)."""

    def make(root: Path) -> list[str]:
        import torch

        from segflow.models.exported import write_sidecar
        from segflow.models.meta import ClassInfo

        model = root / "m.pt"
        loaded = threshold_model(100.0, spatial_dims=2)
        torch.jit.trace(loaded.module, torch.zeros(1, 1, 8, 8)).save(str(model))
        if sidecar is None and module_ok:
            named = tuple(ClassInfo(name=f"class{i}") for i in range(classes))
            meta = loaded.meta.model_copy(update={"classes": named})
            write_sidecar(meta, root / "m.yaml")
        elif sidecar is not None:
            (root / "m.yaml").write_text(sidecar)
        return _run(_scene(root), model, root)

    return make


def _sidecar_is_a_folder(root: Path) -> list[str]:
    args = _exported(None)(root)
    (root / "m.yaml").unlink()
    (root / "m.yaml").mkdir()
    return args


def _safetensors_without_segflow_meta(root: Path) -> list[str]:
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    model = root / "plain.safetensors"
    model.write_bytes(struct.pack("<Q", len(header)) + header)
    return _run(_scene(root), model, root)


def _spec_with_missing_model(root: Path) -> list[str]:
    spec = root / "spec.yaml"
    spec.write_text("model: nowhere.safetensors\n")
    return [str(_scene(root)), "--spec", str(spec), "-o", str(root / "out.zarr"), "--no-flow"]


def _nifti_with(*extra: str) -> Make:
    def make(root: Path) -> list[str]:
        data = np.arange(8 * 8 * 8, dtype=np.int16).reshape(8, 8, 8)
        path = write_nifti(root / "vol.nii.gz", data, np.eye(4))
        return _run(path, _model3d(root), root, *extra)

    return make


SIDECAR_BOMB = (
    "arch: pixel\nin_channels: 1\nclasses: [{name: a}, {name: b}]\nprovenance:\n"
    + "\n".join("  " + line for line in BOMB.splitlines())
)


CASES = [
    # inputs
    Case("missing input", lambda r: _run(r / "none.tif", _model(r), r), "file not found"),
    Case("zero-byte tif", _bytes("zero.tif", b""), "empty"),
    Case("truncated tif", _truncated_tif, "cut.tif"),
    Case("text named tif", _bytes("text.tif", b"hello, not a raster\n" * 20), "text.tif"),
    Case("empty folder", _empty_folder, "no inputs"),
    Case("glob with no match", lambda r: _run(r / "*.tif", _model(r), r), "no files match"),
    Case("zero-byte nifti", _bytes("zero.nii.gz", b"", _model3d), "empty"),
    Case("truncated nifti", _truncated_nifti, "cut.nii.gz"),
    Case("4-D nifti, no volume chosen", _four_d_nifti, "--volume"),
    Case("5-D nifti", _nifti("five.nii.gz", np.zeros((4, 4, 4, 2, 2), np.int16)), "five.nii.gz"),
    Case("zero-size nifti", _nifti("none.nii.gz", np.zeros((0, 4, 4), np.int16)), "none.nii.gz"),
    Case("nan affine nifti", _nan_affine_nifti, "nan.nii"),
    Case("huge header nifti", _huge_header_nifti, "promises"),
    Case("all-nan raster", _nan_tif, "no valid pixels"),
    Case("wrong band count", _wrong_bands, "channel"),
    Case("3-D model on a raster", lambda r: _run(_scene(r), _model3d(r), r), "3-D"),
    # options
    Case("overlap abc", _with_scene("--overlap", "abc"), "overlap"),
    Case("overlap nan", _with_scene("--overlap", "nan"), "overlap"),
    Case("overlap negative", _with_scene("--overlap", "-1"), "overlap"),
    Case("patch size 0", _with_scene("--patch-size", "0"), "patch size"),
    Case("patch size letters", _with_scene("--patch-size", "a,b"), "patch size"),
    Case("blend typo", _with_scene("--blend", "gausian"), "did you mean 'gaussian'"),
    Case("probabilities typo", _with_scene("--probabilities", "uint9"), "probabilities"),
    Case("sigma 0", _with_scene("--sigma", "0"), "sigma"),
    Case("batch size 0", _with_scene("--batch-size", "0"), "batch size"),
    Case("bands 0", _with_scene("--bands", "0"), "bands"),
    Case("slice axis 3", _with_scene("--slice-axis", "3"), "slice axis"),
    Case("scheduler typo", _with_scene("--scheduler", "thread"), "did you mean 'threads'"),
    Case("device typo", _with_scene("--device", "gpu0"), "device"),
    Case("region size 0", _with_scene("--region-size", "0"), "region size"),
    Case("resume and overwrite", _with_scene("--resume", "--overwrite"), "exclude each other"),
    Case("nothing to write", _with_scene("--no-labels"), "nothing to write"),
    Case("series not a uid", _with_scene("--series", "x"), "SeriesInstanceUID"),
    # model files
    Case("missing model", lambda r: _run(_scene(r), r / "none.safetensors", r), "not found"),
    Case("text as model", _model_file("text.safetensors", b"not a model" * 10), "text.safetensors"),
    Case("truncated model", _truncated_model, "cut.safetensors"),
    Case("malformed metadata", _safetensors_with_meta("{not json"), "meta.safetensors"),
    Case(
        "zero output stride",
        _safetensors_with_meta(
            json.dumps(
                {"arch": "pixel", "in_channels": 1, "classes": [{"name": "a"}], "output_stride": 0}
            )
        ),
        "output_stride",
    ),
    Case("pickle payload", _pickle_model, "evil.pt"),
    # specs
    Case("spec unknown key", _spec("tiling: {overlpa: 0.5}"), "did you mean 'overlap'"),
    Case("spec alias bomb", _spec(BOMB), "anchors and aliases"),
    Case("spec not a mapping", _spec("- a\n- b\n"), "mapping"),
    Case(
        "spec missing",
        lambda r: _run(_scene(r), _model(r), r, "--spec", str(r / "no.yaml")),
        "not found",
    ),
    # outputs
    Case("output inside a file", _output_inside_a_file, "file"),
    Case("output is the input", _output_is_the_input, "is a file"),
    Case("existing foreign output", _existing_output, "out.zarr"),
    Case("output is a file named .zarr", _output(_output_is_a_file_named_zarr), "not a store"),
    Case("output is the model file", _output(lambda r: _model(r)), "is a file"),
    Case(
        "output in a read-only folder",
        _output(_read_only_folder),
        "not writable",
        needs_non_root=True,
    ),
    # more inputs
    Case("symlink loop", _symlink_loop, "a.tif"),
    Case("dangling symlink", _dangling_symlink, "gone.tif"),
    Case("folder of non-images", _folder_of_non_images, "notes"),
    Case("empty manifest", _empty_manifest, "list.txt"),
    Case("newline in the name", _newline_in_name, "not found"),
    Case(
        "unsupported URI scheme",
        _remote("ftp://example.com/a.tif"),
        "ftp:// is not a storage segflow reads",
    ),
    Case("nodata the dtype cannot hold", _with_scene("--nodata", "300"), "nodata=300"),
    Case("volume index on a 3-D nifti", _nifti_with("--volume", "1"), "volume 1 does not exist"),
    Case("bands on a nifti", _nifti_with("--bands", "1"), "bands"),
    # more options
    Case("chunk size 0", _with_scene("--chunk-size", "0"), "chunk size"),
    Case("sigma nan", _with_scene("--sigma", "nan"), "sigma"),
    Case("patch size 4-D", _with_scene("--patch-size", "8,8,8,8"), "patch size"),
    Case("workers 0", _with_scene("--workers", "0"), "workers"),
    Case("spacing 0", _with_scene("--spacing", "0"), "spacing"),
    Case("resolution nan", _with_scene("--resolution", "nan"), "resolution"),
    Case("min size letters", _with_scene("--min-size", "abc"), "min-size"),
    Case("connectivity typo", _with_scene("--connectivity", "diag"), "connectivity"),
    Case("keep-largest unknown class", _with_scene("--keep-largest", "roads"), "roads"),
    # more model files
    Case("model folder without models", _model_folder, "no model files"),
    Case("torchscript without sidecar", _exported(None, module_ok=False), "sidecar"),
    Case("sidecar disagrees with module", _exported(None, classes=3), "declares 3 classes"),
    Case("sidecar is a folder", _sidecar_is_a_folder, "needs a metadata sidecar"),
    Case("sidecar is binary", _exported("\x00\xff\xfe garbage \x00"), "m.yaml"),
    Case("sidecar alias bomb", _exported(SIDECAR_BOMB), "anchors and aliases"),
    Case("safetensors without segflow metadata", _safetensors_without_segflow_meta, "segflow"),
    Case("spec with a missing model", _spec_with_missing_model, "nowhere.safetensors"),
]
