"""The ``segflow`` command: a thin layer over the library.

Each command lives in a module of its own and registers itself here. User mistakes
(SegflowError) print one line and exit non-zero, without a traceback; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import gc
import warnings
from importlib import import_module

import typer

app = typer.Typer(
    name="segflow",
    help="Tiled segmentation of large GeoTIFFs and NIfTI volumes into geometry-keeping Zarr.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# command modules, in the order of `segflow --help`
COMMANDS = (
    "segflow.cli.run",
    "segflow.cli.outputs",
    "segflow.cli.dicom",
    "segflow.cli.flows",
    "segflow.cli.train",
    "segflow.cli.stac",
)


def _mount_subcommands() -> None:
    from segflow.cli.model import model_app

    for name in COMMANDS:
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:  # a part not installed in this build
            if exc.name != name:
                raise
            continue
        module.register(app)
    app.add_typer(model_app, name="model", help="Create, inspect and export model files.")


_mount_subcommands()


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    return f"warning: {' '.join(str(message).split())}\n"


def main() -> None:
    # the command owns its process: tune the heap (and GDAL's cache) before any work;
    # the library leaves a caller's process as it is
    from segflow.heap import tune_process

    tune_process()
    warnings.formatwarning = _one_line_warning  # a warning is one line, not a source excerpt
    try:
        app()
    finally:
        # the process ends here: spare the final collection over torch's and Prefect's
        # objects (about a second on two cores)
        gc.freeze()


if __name__ == "__main__":
    main()
