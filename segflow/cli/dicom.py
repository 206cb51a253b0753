"""DICOM commands of ``segflow``: list the series of a folder/zip, and the SEG export.

``segflow dicom-series PATH`` shows each image series on one line (UID, modality, number,
description, slices) and the files skipped, so a person can pick one with ``--series``.
``export_dicom_seg_command`` is what ``segflow export STORE --to dicom-seg`` calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segflow.cli.common import one_line_errors, out


def export_dicom_seg_command(
    store: Path,
    target: Path,
    source: Path | None,
    series: str | None,
    overwrite: bool,
    fractional: bool = False,
) -> None:
    """Write ``store`` as a DICOM SEG referencing ``source`` (the series it was made from)."""
    from segflow.errors import ConfigError
    from segflow.io.dicom_seg import export_dicom_seg

    if source is None:
        raise ConfigError("--to dicom-seg needs --source SERIES (the DICOM series of the store)")
    written = export_dicom_seg(
        store, target, source=source, series=series, fractional=fractional, overwrite=overwrite
    )
    out.print(f"[green]wrote[/] {written}", highlight=False)


def dicom_series_command(
    path: Annotated[Path, typer.Argument(help="A folder, a zip or one file of DICOM series.")],
) -> None:
    """List the DICOM image series under PATH and the files that are not part of one."""
    with one_line_errors():
        from segflow.io.dicom import list_series

        scan = list_series(path)
        for info in scan.series.values():  # one line each: UIDs are copied from here
            out.print(info.label(), highlight=False, soft_wrap=True)
        for note in scan.skipped:
            out.print(f"skipped {note}", highlight=False)
        if not scan.series:
            out.print(f"no DICOM image series in {path}")


def register(app: typer.Typer) -> None:
    """Add the DICOM commands to ``app``."""
    app.command("dicom-series")(dicom_series_command)
