"""``segflow stac search``: a STAC API search written as an ItemCollection file.

The file is what ``segflow run items.json`` then maps, one store per item; it also
records exactly which items a run was given. The search itself is the land-cover
flow's (:mod:`segflow.io.stac_search`, through pystac-client).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from segflow.cli.common import one_line_errors, out
from segflow.errors import ConfigError, OutputError, ReaderError

stac_app = typer.Typer(no_args_is_help=True)


def _bbox(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ConfigError(f"--bbox must be west,south,east,north (4 numbers); got {text!r}")
    return values


def _json_option(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f'{option} is not valid JSON ({exc}); e.g. \'{{"eo:cloud_cover": {{"lt": 20}}}}\''
        ) from None


def _geometry(path: Path | None) -> dict[str, Any] | None:
    """A GeoJSON geometry from a file holding a geometry, a Feature or a FeatureCollection of one."""
    if path is None:
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--intersects {path}: cannot be read as GeoJSON ({exc})") from None
    if isinstance(found, dict) and found.get("type") == "FeatureCollection":
        features = found.get("features") or []
        found = features[0] if len(features) == 1 else None
    if isinstance(found, dict) and found.get("type") == "Feature":
        found = found.get("geometry")
    if not isinstance(found, dict) or "coordinates" not in found:
        raise ConfigError(f"--intersects {path}: give one GeoJSON geometry (or a Feature of one)")
    return found


@stac_app.command("search")
def search_command(
    url: Annotated[str, typer.Argument(help="The STAC API's landing page (http:// or https://).")],
    collection: Annotated[
        list[str] | None, typer.Option("--collection", "-c", help="A collection id (repeatable).")
    ] = None,
    bbox: Annotated[str | None, typer.Option(help="west,south,east,north in degrees.")] = None,
    intersects: Annotated[
        Path | None, typer.Option(help="A GeoJSON file: items intersecting its geometry.")
    ] = None,
    datetime: Annotated[
        str | None, typer.Option(help="An instant or interval, e.g. 2026-06-01/2026-06-02.")
    ] = None,
    query: Annotated[
        str | None, typer.Option(help='Query extension, as JSON: {"eo:cloud_cover": {"lt": 20}}.')
    ] = None,
    max_items: Annotated[int, typer.Option(help="Stop after this many items.")] = 1000,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The ItemCollection file to write.")
    ] = Path("items.json"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Search a STAC API; write the items found as an ItemCollection for `segflow run`."""
    with one_line_errors():
        from segflow.io.stac_search import StacSearch, search_to_file

        if bbox is not None and intersects is not None:
            raise ConfigError("give --bbox or --intersects, not both")
        if max_items < 1:
            raise ConfigError(f"--max-items must be at least 1, got {max_items}")
        if output.exists() and not overwrite:
            raise OutputError(f"{output} exists; pass --overwrite to replace it")
        search = StacSearch.from_mapping(
            {
                "url": url,
                "collections": collection or (),
                "bbox": _bbox(bbox),
                "intersects": _geometry(intersects),
                "datetime": datetime,
                "query": _json_option(query, "--query"),
                "max_items": max_items,
            }
        )
        partial = output.with_name(f".{output.name}.part")
        try:
            _, count = search_to_file(search, partial)
            if count == 0:
                raise ReaderError(
                    f"the STAC search at {url} found no items; widen --bbox or --datetime, "
                    "or check --collection"
                )
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
        out.print(f"[green]wrote[/] {output}: {count:,} item(s)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``segflow stac`` to ``app``."""
    app.add_typer(stac_app, name="stac", help="STAC: search an API for the items to map.")
