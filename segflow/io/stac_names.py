"""Which inputs are STAC documents: told by the name alone, with no import of pystac."""

from __future__ import annotations

__all__ = ["is_stac_input", "split_fragment"]


def split_fragment(text: str) -> tuple[str, str | None]:
    """``items.json#ID`` -> (``items.json``, ``ID``); anything else -> (text, None)."""
    head, sep, fragment = text.rpartition("#")
    if sep and head.lower().endswith(".json") and fragment:
        return head, fragment
    return text, None


def is_stac_input(text: str) -> bool:
    """A JSON file name (or ``file.json#item``): STAC is the only JSON segflow reads."""
    head, _ = split_fragment(text)
    return head.lower().endswith(".json")
