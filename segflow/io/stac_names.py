"""Which inputs are STAC documents: told by the name alone, with no import of pystac."""

from __future__ import annotations

__all__ = ["is_stac_input", "split_fragment"]

# JSON documents, and ItemCollections as stac-geoparquet: segflow reads no other
# JSON or Parquet input
STAC_SUFFIXES = (".json", ".parquet", ".geoparquet")


def split_fragment(text: str) -> tuple[str, str | None]:
    """``items.json#ID`` -> (``items.json``, ``ID``); anything else -> (text, None)."""
    head, sep, fragment = text.rpartition("#")
    if sep and head.lower().endswith(STAC_SUFFIXES) and fragment:
        return head, fragment
    return text, None


def is_stac_input(text: str) -> bool:
    """A JSON or stac-geoparquet file name (or ``file.json#item``)."""
    head, _ = split_fragment(text)
    return head.lower().endswith(STAC_SUFFIXES)
