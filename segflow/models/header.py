"""A model file's metadata without torch: the safetensors header, parsed and checked.

The command reads it before importing torch, so a truncated, corrupt or wrongly
described model file fails in a second instead of after the imports.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from segflow.errors import ModelError
from segflow.io.documents import DocumentError, read_document
from segflow.models.messages import first_line
from segflow.models.meta import ModelMeta

META_KEY = "segflow_meta"
SAFETENSORS_HEADER_LIMIT = 100 * 2**20  # safetensors' own limit on its JSON header
SIDECAR_SUFFIXES = (".yaml", ".yml", ".json")


def parse_meta(data: dict[str, Any] | str, where: str) -> ModelMeta:
    """Validate metadata into a ModelMeta; one line naming the first bad field."""
    try:
        if isinstance(data, str):
            return ModelMeta.model_validate_json(data)
        return ModelMeta.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err.get("loc", ())) or "metadata"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ModelError(
            f"invalid model metadata in {where}: {field}: {err['msg']}{more}"
        ) from None


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, once the file is known to hold every byte
    it announces (safetensors maps lazily and would fail only when a weight is read)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelError(f"{path.name}: truncated model file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ModelError(f"{path.name}: truncated model file (header cut short)")
        if n > SAFETENSORS_HEADER_LIMIT:
            raise ModelError(f"{path.name}: corrupt model file (a {n}-byte header)")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelError(f"{path.name}: corrupt model file (unreadable header)") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path.name}: corrupt model file (its header is not a mapping)")
    try:
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (KeyError, IndexError, TypeError):
        raise ModelError(f"{path.name}: corrupt model file (bad tensor offsets)") from None
    needed = 8 + n + max(ends, default=0)
    if size < needed:
        raise ModelError(
            f"{path.name}: truncated model file ({size} of {needed} bytes); copy it again"
        )
    return header


def safetensors_meta(path: Path) -> ModelMeta:
    """The segflow metadata stored in a safetensors file's header."""
    metadata = safetensors_header(path).get("__metadata__") or {}
    text = metadata.get(META_KEY) if isinstance(metadata, dict) else None
    if not isinstance(text, str):
        raise ModelError(
            f"{path.name} is a safetensors file without segflow metadata; create it with "
            "segflow.models.save_model or 'segflow model create'"
        )
    return parse_meta(text, path.name)


def looks_like_safetensors(path: Path) -> bool:
    """A safetensors file by its content (a JSON header after 8 bytes) or its suffix."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and path.suffix != ".onnx":
        return True
    return path.suffix == ".safetensors"


def sidecar_candidates(model_path: Path) -> list[Path]:
    model_path = Path(model_path)
    full = [model_path.with_name(model_path.name + s) for s in SIDECAR_SUFFIXES]
    stem = [model_path.with_suffix(s) for s in SIDECAR_SUFFIXES]
    return full + [p for p in stem if p != model_path]


def find_sidecar(model_path: Path) -> Path | None:
    return next((p for p in sidecar_candidates(model_path) if p.is_file()), None)


def read_sidecar(path: Path) -> ModelMeta:
    path = Path(path)
    try:
        data = read_document(path)
    except (OSError, DocumentError) as exc:
        raise ModelError(f"cannot read metadata sidecar {path.name}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ModelError(f"metadata sidecar {path.name} must hold a mapping of ModelMeta fields")
    return parse_meta(data, path.name)


def sidecar_meta(path: Path, sidecar: str | Path | None = None) -> ModelMeta:
    """The metadata of an exported model (TorchScript, ONNX, a legacy state dict) from
    the sidecar beside it, or the one given."""
    found = Path(sidecar) if sidecar is not None else find_sidecar(path)
    if found is None or not found.is_file():
        names = ", ".join(p.name for p in sidecar_candidates(path)[:2])
        raise ModelError(
            f"{path.name} needs a metadata sidecar ({names}) describing classes, channels and "
            "normalization; write one with segflow.models.exported.write_sidecar"
        )
    return read_sidecar(found)


def header_meta(path: Path) -> ModelMeta:
    """Any model file's metadata, without torch: its safetensors header, or its sidecar."""
    return safetensors_meta(path) if looks_like_safetensors(path) else sidecar_meta(path)
