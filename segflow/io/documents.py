"""Reading the small documents users hand us (pipeline specs, model sidecars), safely.

YAML is read with a loader that refuses anchors and aliases: a "billion laughs"
document of a few hundred bytes expands to gigabytes with them, and no spec or
sidecar needs them. Both YAML and JSON are size-limited before they are parsed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

MAX_DOCUMENT_BYTES = 1 << 20  # a spec or a sidecar is a page of text; anything larger is not one


class DocumentError(ValueError):
    """A document that cannot be read; the message is one line for the caller to prefix."""


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors and aliases instead of expanding them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            mark = event.start_mark
            raise DocumentError(
                f"YAML anchors and aliases are not accepted (line {mark.line + 1}); "
                "write the values out"
            )
        return super().compose_node(parent, index)


def read_text(path: Path, limit: int = MAX_DOCUMENT_BYTES) -> str:
    """The file's text, refused beyond ``limit`` bytes (OSError passes through)."""
    with Path(path).open("rb") as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise DocumentError(f"larger than {limit} bytes; is it the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DocumentError("not UTF-8 text") from None


def parse_yaml(text: str) -> Any:
    """YAML without anchors, aliases or Python tags; one-line DocumentErrors."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DocumentError(f"not valid YAML{where}; check the indentation and quoting") from None


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"not valid JSON at line {exc.lineno}") from None


def read_document(path: Path, limit: int = MAX_DOCUMENT_BYTES) -> Any:
    """A YAML or JSON file (by its suffix) as plain data, safely and size-limited."""
    text = read_text(path, limit)
    return parse_json(text) if Path(path).suffix.lower() == ".json" else parse_yaml(text)
