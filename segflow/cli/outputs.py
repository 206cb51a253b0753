"""Output commands of ``segflow``: export, inspect, stats, preview, pyramid, postprocess.

``register(app)`` adds them to the main Typer app. Each command is a thin call into
the library; a SegflowError prints one line and exits 1, like ``segflow run``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from segflow.cli.common import err, one_line_errors, out
from segflow.errors import ConfigError, OutputError
from segflow.io.uris import ObjectPath, as_location, is_uri
from segflow.options import parse_ints

if TYPE_CHECKING:
    from segflow.io.zarr_sink import ZarrSink


class ExportFormat(StrEnum):
    COG = "cog"
    NIFTI = "nifti"
    PNG = "png"
    GPKG = "gpkg"
    PARQUET = "parquet"
    GEOJSON = "geojson"
    DICOM_SEG = "dicom-seg"
    OME_ZARR = "ome-zarr"


POLYGON_FORMATS = (ExportFormat.GPKG, ExportFormat.PARQUET, ExportFormat.GEOJSON)
# "_labels": the store is usually named after its input, whose name must not be taken
SUFFIXES = {
    ExportFormat.COG: "_labels.tif",
    ExportFormat.NIFTI: "_labels.nii.gz",
    ExportFormat.PNG: "_preview.png",
    ExportFormat.GPKG: "_polygons.gpkg",
    ExportFormat.PARQUET: "_polygons.parquet",
    ExportFormat.GEOJSON: "_polygons.geojson",
    ExportFormat.DICOM_SEG: "_seg.dcm",
    ExportFormat.OME_ZARR: "_ome.zarr",
}


def default_output(
    store: Path | ObjectPath, fmt: ExportFormat, array: str = "labels"
) -> Path | ObjectPath:
    """``OUT.zarr`` -> ``OUT_labels.tif`` / ``OUT_labels.nii.gz`` / ``OUT_preview.png`` beside it
    (``OUT_uncertainty.tif`` for the uncertainty)."""
    name = store.name[: -len(".zarr")] if store.name.endswith(".zarr") else store.name
    suffix = SUFFIXES[fmt]
    if array != "labels":
        suffix = suffix.replace("_labels", f"_{array}")
    return store.with_name(name + suffix)


ARRAYS = ("labels", "uncertainty")


def _check_array(array: str, to: ExportFormat) -> None:
    """``--array`` names a store array, and only COG and NIfTI take another than labels."""
    if array not in ARRAYS:
        raise ConfigError(f"--array must be labels or uncertainty, got '{array}'")
    if array != "labels" and to not in (ExportFormat.COG, ExportFormat.NIFTI):
        raise ConfigError(
            f"--to {to.value} exports labels; --array {array} is for --to cog or --to nifti"
        )


def recorded_input(store: Path) -> Path | None:
    """The input recorded in the store's provenance, when that file still exists."""
    from segflow.io.zarr_sink import ZarrSink

    source = ZarrSink.open(store).attrs.get("input")
    path = source.get("path") if isinstance(source, dict) else None
    return Path(path) if path and Path(path).is_file() else None


def export_command(
    store: Annotated[
        str, typer.Argument(help="A segflow output store (OUT.zarr, or an s3:// URI).")
    ],
    to: Annotated[
        ExportFormat,
        typer.Option(
            "--to",
            help="cog, nifti, png, dicom-seg, ome-zarr (image + labels for OME viewers), "
            "or polygons: gpkg, parquet, geojson.",
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Target file or URI (default: beside the store)."),
    ] = None,
    array: Annotated[
        str,
        typer.Option(
            help="COG, NIfTI: the store array to export, labels or uncertainty (a run "
            "with --uncertainty)."
        ),
    ] = "labels",
    resampling: Annotated[
        str, typer.Option(help="COG overviews of labels: mode or nearest.")
    ] = "mode",
    compress: Annotated[
        str, typer.Option(help="COG compression: deflate, lzw, zstd, none.")
    ] = "deflate",
    reference: Annotated[
        Path | None,
        typer.Option(help="NIfTI: the input volume, to copy its header's geometry fields."),
    ] = None,
    nodata_value: Annotated[
        int | None, typer.Option(help="NIfTI: write nodata voxels as this label (e.g. 0).")
    ] = None,
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="PNG: the image to draw the mask over; ome-zarr: the parent image "
            "(default: the recorded input).",
        ),
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Polygons: only these classes (names or values, a,b).")
    ] = None,
    min_area: Annotated[
        str | None,
        typer.Option(
            help="Polygons: drop smaller ones; CRS units², or with a unit: px, m2, ha, km2."
        ),
    ] = None,
    simplify: Annotated[
        float | None,
        typer.Option(help="Polygons: topology-preserving simplification, tolerance in CRS units."),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            help="DICOM SEG: the DICOM series the store was made from (folder, zip, file)."
        ),
    ] = None,
    series: Annotated[
        str | None,
        typer.Option(help="DICOM SEG: the SeriesInstanceUID when --source holds several."),
    ] = None,
    fractional: Annotated[
        bool,
        typer.Option(help="DICOM SEG: fractional, from the store's class probabilities."),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Export a store as a COG, a NIfTI mask, a DICOM SEG, OME-Zarr, a PNG quicklook or polygons."""
    with one_line_errors():
        local_only = (ExportFormat.DICOM_SEG, ExportFormat.OME_ZARR)
        if to in local_only and (is_uri(store) or (output and is_uri(output))):
            raise ConfigError(f"--to {to.value} writes local files; give local paths")
        _check_array(array, to)
        location = as_location(store)
        target = as_location(output) if output else default_output(location, to, array)
        if to is ExportFormat.COG:
            from segflow.io.cog import export_cog

            cog = export_cog(
                location,
                target,
                resampling=resampling,
                compress=compress,
                overwrite=overwrite,
                array=array,
            )
            out.print(f"[green]wrote[/] {cog}", highlight=False)
            return
        # a store in object storage is opened once here (one-line errors for a missing
        # bucket or store); the exporters read it through zarr's fsspec store
        source_store = location if isinstance(location, Path) else _open_store(location)
        options = ExportOptions(
            reference,
            nodata_value,
            input,
            classes,
            min_area,
            simplify,
            source,
            series,
            fractional,
            array,
        )

        written: list[tuple[Path, str]] = []

        def write(local: Path) -> None:
            written.extend(_export_local(to, source_store, local, options, overwrite))

        if isinstance(target, ObjectPath):
            from segflow.io.staged import export_to_object

            export_to_object(target, overwrite, write)
        else:
            write(target)
        for path, detail in written:
            shown = target.with_name(path.name) if isinstance(target, ObjectPath) else path
            out.print(f"[green]wrote[/] {shown}{detail}", highlight=False)


@dataclass(frozen=True)
class ExportOptions:
    """The format-specific options of ``segflow export`` (see its --help)."""

    reference: Path | None
    nodata_value: int | None
    input: Path | None
    classes: str | None
    min_area: str | None
    simplify: float | None
    source: Path | None
    series: str | None
    fractional: bool
    array: str = "labels"


def _open_store(location: ObjectPath) -> ZarrSink:
    from segflow.io.zarr_sink import ZarrSink

    return ZarrSink.open(location)


def _export_local(
    to: ExportFormat, store: Path | ZarrSink, target: Path, options: ExportOptions, overwrite: bool
) -> list[tuple[Path, str]]:
    """Write ``store`` as ``to`` into the local file ``target``; the files written, each
    with a detail for its "wrote" line."""
    if to in POLYGON_FORMATS:
        from segflow.outputs.polygons import export_polygons

        polygons = export_polygons(
            store,
            target,
            to=to.value,
            classes=options.classes,
            min_area=options.min_area,
            simplify=options.simplify,
            overwrite=overwrite,
        )
        counts = ", ".join(f"{name} {n:,}" for name, n in polygons.per_class.items())
        dropped = f"; {polygons.dropped:,} below --min-area" if polygons.dropped else ""
        return [(polygons.path, f": {polygons.features:,} polygons ({counts}){dropped}")]
    if to is ExportFormat.NIFTI:
        from segflow.io.nifti_export import export_nifti

        result = export_nifti(
            store,
            target,
            reference=options.reference,
            nodata_value=options.nodata_value,
            overwrite=overwrite,
            array=options.array,
        )
        return [(result.path, "")] + [(path, "") for path in result.sidecars.values()]
    if to is ExportFormat.DICOM_SEG:
        from segflow.cli.dicom import export_dicom_seg_command

        assert isinstance(store, Path)  # refused for URIs above
        export_dicom_seg_command(
            store, target, options.source, options.series, overwrite, options.fractional
        )
        return []
    if to is ExportFormat.OME_ZARR:
        from segflow.io.ome_export import export_ome_zarr

        assert isinstance(store, Path)  # refused for URIs above
        return [(export_ome_zarr(store, target, image=options.input, overwrite=overwrite), "")]
    from segflow.outputs.preview import preview

    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists; pass --overwrite to replace it")
    return [(preview(store, target, input=options.input), "")]


def inspect_command(
    path: Annotated[Path, typer.Argument(help="An output store (OUT.zarr) or an input image.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Describe an output store (geometry, classes, completion, provenance) or an input."""
    with one_line_errors():
        from segflow.outputs.inspect import inspect_path, render

        info = inspect_path(path)
        if as_json:
            typer.echo(json.dumps(info, indent=2, default=str))
        else:
            render(info, out)


def stats_command(
    store: Annotated[Path, typer.Argument(help="A segflow output store (OUT.zarr).")],
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write the table as CSV.")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write everything as JSON.")
    ] = None,
    allow_incomplete: Annotated[
        bool, typer.Option(help="Count an unfinished store (unwritten chunks count as nodata).")
    ] = False,
) -> None:
    """Per-class pixel counts and areas (m², ha, km²) or volumes (mL)."""
    with one_line_errors():
        from segflow.outputs.stats import (
            class_statistics,
            write_statistics_csv,
            write_statistics_json,
        )

        stats = class_statistics(store, allow_incomplete=allow_incomplete)
        if csv_path is not None:
            write_statistics_csv(stats, csv_path)
        if json_path is not None:
            write_statistics_json(stats, json_path)
        out.print(_stats_table(stats))
        for path in (csv_path, json_path):
            if path is not None:
                out.print(f"[green]wrote[/] {path}", highlight=False)


def _stats_table(stats: dict[str, Any]) -> Table:
    volume = stats["kind"] == "volume"
    table = Table(title=f"{Path(stats['store']).name}: per-class statistics", title_justify="left")
    table.add_column("value", justify="right")
    table.add_column("name")
    table.add_column("voxels" if volume else "pixels", justify="right")
    table.add_column("%", justify="right")
    if volume:
        table.add_column("mL", justify="right")
    elif stats["area_method"] is not None:  # m² is in the CSV/JSON; ha and km² fit a terminal
        table.add_column("ha", justify="right")
        table.add_column("km²", justify="right")
    for c in stats["classes"]:
        row = [
            str(c["value"]),
            c["name"],
            f"{c['voxels' if volume else 'pixels']:,}",
            f"{100 * c['fraction']:.2f}",
        ]
        if volume:
            row.append(f"{c['volume_ml']:.3f}")
        elif stats["area_method"] is not None:
            row += [f"{c['area_ha']:,.2f}", f"{c['area_km2']:,.4f}"]
        table.add_row(*row)
    return table


def preview_command(
    store: Annotated[Path, typer.Argument(help="A segflow output store (OUT.zarr).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")],
    input: Annotated[
        Path | None,
        typer.Option(
            "--input", help="The segmented image (default: the one recorded in the store)."
        ),
    ] = None,
    bands: Annotated[str | None, typer.Option(help="Rasters: display bands, e.g. 4,3,2.")] = None,
    max_size: Annotated[int, typer.Option(help="Longest side of the PNG in pixels.")] = 1024,
    alpha: Annotated[float, typer.Option(help="Opacity of the mask colours, 0..1.")] = 0.5,
) -> None:
    """A PNG quicklook: the input with the mask overlaid and a legend."""
    with one_line_errors():
        from segflow.outputs.preview import preview

        image = input or recorded_input(store)
        if image is None:
            err.print(
                "[yellow]note:[/] no input given or found; drawing the mask alone", highlight=False
            )
        written = preview(
            store,
            output,
            input=image,
            bands=parse_ints(bands, "--bands"),
            max_size=max_size,
            alpha=alpha,
        )
        out.print(f"[green]wrote[/] {written}", highlight=False)


def pyramid_command(
    store: Annotated[Path, typer.Argument(help="A complete segflow output store (OUT.zarr).")],
    levels: Annotated[
        int | None, typer.Option(help="Number of levels (default: until 256 px / 32 voxels).")
    ] = None,
    resampling: Annotated[str, typer.Option(help="mode or nearest.")] = "mode",
    overwrite: Annotated[bool, typer.Option(help="Rebuild an existing pyramid.")] = False,
) -> None:
    """Add multiscale label levels to a store (overview groups or OME-Zarr levels)."""
    with one_line_errors():
        from segflow.outputs.pyramid import build_pyramid

        built = build_pyramid(store, levels=levels, resampling=resampling, overwrite=overwrite)
        for lv in built:
            shape = " x ".join(str(n) for n in lv.shape)
            out.print(f"level {lv.level}: {lv.path}  {shape}", highlight=False)
        if not built:
            out.print("the store is already small: no levels needed")


def postprocess_command(
    store: Annotated[Path, typer.Argument(help="A complete segflow output store (OUT.zarr).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The new store to write.")],
    keep_largest: Annotated[
        str | None,
        typer.Option(
            help="Keep only the largest component of these classes (names or values, a,b)."
        ),
    ] = None,
    keep_top: Annotated[int, typer.Option(help="With --keep-largest: keep the K largest.")] = 1,
    min_size: Annotated[
        str | None,
        typer.Option(
            help="Drop smaller components: pixels/voxels, or with a unit (m2, ha, km2, mL)."
        ),
    ] = None,
    sieve: Annotated[
        str | None,
        typer.Option(
            help="Rasters: merge smaller components (pixels, or m2, ha, km2) into their largest "
            "neighbour, as GDAL's sieve; runs before --keep-largest / --min-size."
        ),
    ] = None,
    fill: Annotated[str, typer.Option(help="The class removed components become.")] = "0",
    connectivity: Annotated[
        str,
        typer.Option(help="full (8 / 26 neighbours) or face (4 / 6; GDAL's default sieve)."),
    ] = "full",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output store.")] = False,
) -> None:
    """Clean a store by connected components (keep largest / top K, minimum size, sieve)."""
    with one_line_errors():
        from segflow.outputs.postprocess import postprocess

        result = postprocess(
            store,
            output,
            keep_largest=keep_largest,
            keep_top=keep_top,
            min_size=min_size,
            sieve=sieve,
            fill=fill,
            connectivity=connectivity,
            overwrite=overwrite,
        )
        sieved = result.summary.get("sieve")
        if sieved is not None:
            out.print(
                f"sieve: {sieved['small']:,} small components, {sieved['merged']:,} merged "
                f"({sieved['pixels_changed']:,} px changed), "
                f"{sieved['isolated'] + sieved['unmergeable']:,} left as they are",
                highlight=False,
            )
        for row in result.summary.get("components", []):
            out.print(
                f"{row['name']}: {row['components']:,} components, {row['removed']:,} removed "
                f"({row['pixels_removed']:,} px)",
                highlight=False,
            )
        out.print(f"[green]wrote[/] {result.path}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the output commands to ``app``."""
    app.command("export")(export_command)
    app.command("inspect")(inspect_command)
    app.command("stats")(stats_command)
    app.command("preview")(preview_command)
    app.command("pyramid")(pyramid_command)
    app.command("postprocess")(postprocess_command)
