"""ItemCollections stored as stac-geoparquet (one row per item), local or in object storage.

A stac-geoparquet file is read whole into the ItemCollection JSON it stands for (the
stac-geoparquet package turns its Arrow table back into item dictionaries), so the
rest of STAC input treats ``items.parquet`` and ``items.json`` alike, including
``items.parquet#ITEM_ID`` and asset hrefs relative to the file.
"""

from __future__ import annotations

from typing import Any

from segflow.errors import ReaderError
from segflow.io.uris import ObjectPath, as_location

__all__ = ["is_parquet", "read_parquet_collection"]


def is_parquet(href: str) -> bool:
    return href.lower().endswith((".parquet", ".geoparquet"))


def read_parquet_collection(href: str) -> dict[str, Any]:
    """The ItemCollection (a GeoJSON FeatureCollection dict) a stac-geoparquet file holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from stac_geoparquet.arrow import stac_table_to_items

    location = as_location(href)
    try:
        if isinstance(location, ObjectPath):
            from segflow.io import remote

            remote.check_object(location)
            with remote.open_object(location) as handle:
                table = pq.read_table(handle)
        else:
            table = pq.read_table(location)
        features = list(stac_table_to_items(table))
    except FileNotFoundError:
        raise ReaderError(f"{href}: not found; check the path") from None
    except (pa.ArrowException, OSError) as exc:
        raise ReaderError(f"{href}: not a readable Parquet file ({exc})") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise ReaderError(
            f"{href}: not a stac-geoparquet ItemCollection ({type(exc).__name__}: {exc})"
        ) from None
    return {"type": "FeatureCollection", "features": features}
