"""Inputs of a batch and where their outputs go.

A batch is a folder, a glob, a manifest (a CSV with a path column and an optional id
column, or a text file with one path per line), a STAC document (an Item, an
ItemCollection or a catalog: one input per item, named by its id), a prefix or glob in
object storage, or a list of any of these. Each input
gets ``<output>/<name>.zarr``; an existing output is absent, partial (a run stopped
before finalizing it), complete, or foreign (not a segflow store). ``segflow run``,
``segflow.segment`` and the batch flows all plan their inputs here, so a folder means
the same with and without a flow run.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segflow.errors import ConfigError
from segflow.io.dicom_paths import is_dicom_folder
from segflow.io.stac_names import is_stac_input
from segflow.io.uri_inputs import expand_uri, is_one_uri
from segflow.io.uris import ObjectPath, as_location, is_uri

RASTER_PATTERNS = ("*.tif", "*.tiff", "*.TIF", "*.TIFF")
VOLUME_PATTERNS = ("*.nii", "*.nii.gz")
INPUT_PATTERNS = (*RASTER_PATTERNS, *VOLUME_PATTERNS)
MANIFEST_SUFFIXES = (".csv", ".txt", ".lst")
PATH_COLUMNS = ("path", "input", "file", "scan", "image", "scene", "filename")
NAME_COLUMNS = ("id", "name", "scan_id", "scene_id", "subject")


@dataclass(frozen=True)
class InputItem:
    """One input and where its output goes."""

    name: str
    input: str
    output: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_inputs(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    patterns: Sequence[str] = INPUT_PATTERNS,
) -> list[tuple[str | None, Path | ObjectPath]]:
    """Expand a folder, a glob, a manifest (.csv/.txt) or a list into (name or None, path).

    Missing files are kept: they fail as inputs of their own, with the reader's reason,
    instead of stopping the batch. URIs (``s3://bucket/scenes/``) expand the same way
    in object storage: a prefix lists its images, a glob matches keys.
    """
    entries = [source] if isinstance(source, str | os.PathLike) else list(source)
    found: list[tuple[str | None, Path | ObjectPath]] = []
    for entry in entries:
        text = os.fspath(entry)
        if is_stac_input(text):  # a STAC Item, ItemCollection or catalog: its items
            from segflow.io.stac import stac_inputs

            found.extend((name, as_location(item)) for name, item in stac_inputs(text))
        elif is_uri(text):
            found.extend(expand_uri(ObjectPath(text), patterns))
        else:
            found.extend(_expand(Path(text).expanduser(), patterns))
    return found


def is_one_input(source: str | os.PathLike[str]) -> bool:
    """True for a single file path: not a folder, a glob or a manifest."""
    if is_stac_input(os.fspath(source)):
        from segflow.io.stac import is_single_item

        return is_single_item(os.fspath(source))
    if is_uri(os.fspath(source)):
        return is_one_uri(ObjectPath(os.fspath(source)))
    path = Path(os.fspath(source)).expanduser()
    if any(ch in str(path) for ch in "*?["):
        return False
    if path.is_dir():
        return is_dicom_folder(path)  # a DICOM series is one input, however many files
    return not (path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file())


def _expand(path: Path, patterns: Sequence[str]) -> list[tuple[str | None, Path | ObjectPath]]:
    text = str(path)
    if any(ch in text for ch in "*?["):
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise ConfigError(f"no files match {text}; check the pattern")
        return [(None, Path(m)) for m in matches if Path(m).is_file()]
    if path.is_dir():
        files = sorted({p for pattern in patterns for p in path.glob(pattern) if p.is_file()})
        if not files and is_dicom_folder(path):
            return [(None, path)]
        if not files:
            raise ConfigError(
                f"no inputs in {path} (looked for {', '.join(patterns)}); check the folder"
            )
        return [(None, p) for p in files]
    if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
        return list(read_manifest(path))
    return [(None, path)]


def read_manifest(path: Path) -> list[tuple[str | None, Path]]:
    """A CSV with a path column (and optionally an id column), or one path per line.

    Relative paths are relative to the manifest's folder.
    """
    text = path.read_text(encoding="utf-8-sig")
    rows: list[tuple[str | None, str]] = []
    name: str | None
    if path.suffix.lower() == ".csv":
        table = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if not table:
            raise ConfigError(f"manifest {path} is empty; list one input per row")
        header = [c.strip().lower() for c in table[0]]
        path_col = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
        if path_col is None:
            rows = [(None, r[0].strip()) for r in table]  # no header: first column
        else:
            name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
            for r in table[1:]:
                name = r[name_col].strip() if name_col is not None and name_col < len(r) else ""
                rows.append((name or None, r[path_col].strip() if path_col < len(r) else ""))
    else:
        rows = [
            (None, line.strip())
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    items: list[tuple[str | None, Path]] = []
    for number, (name, entry) in enumerate(rows, start=1):
        if not entry:
            raise ConfigError(f"manifest {path}: entry {number} has no path")
        p = Path(entry).expanduser()
        items.append((name, p if p.is_absolute() else path.parent / p))
    if not items:
        raise ConfigError(f"manifest {path} lists no inputs")
    return items


def input_stem(path: Path | ObjectPath) -> str:
    name = path.name
    for suffix in (".nii.gz", ".tiff", ".tif", ".nii", ".gtiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def plan_items(
    inputs: Sequence[tuple[str | None, Path | ObjectPath]], output: Path | ObjectPath
) -> list[InputItem]:
    """One input and OUT ending in .zarr: OUT itself; otherwise OUT/<name>.zarr."""
    if not inputs:
        raise ConfigError("no inputs given")
    if len(inputs) == 1 and output.suffix == ".zarr":
        name, path = inputs[0]
        return [InputItem(name=name or input_stem(path), input=str(path), output=str(output))]
    items = [
        InputItem(
            name=name or input_stem(path),
            input=str(path),
            output=str(output / f"{name or input_stem(path)}.zarr"),
        )
        for name, path in inputs
    ]
    seen: dict[str, str] = {}
    for item in items:
        if item.output in seen:
            raise ConfigError(
                f"{seen[item.output]} and {item.input} would both write {item.output}; "
                "give them distinct names (an id column in the manifest) or separate folders"
            )
        seen[item.output] = item.input
    return items
