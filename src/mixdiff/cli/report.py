"""`mixdiff report ...`: tables and plots of runs, from the files they wrote."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from mixdiff.cli._app import app, console, fail
from mixdiff.errors import MixDiffError

report_app = typer.Typer(help="Plots and tables of runs.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("curves")
def report_curves(
    runs: List[Path] = typer.Argument(..., help="Run directories of `mixdiff pretrain`."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
) -> None:
    """Plot training loss and the online kNN / probe accuracy of runs, epoch by epoch."""
    from mixdiff.report.curves import plot_curves

    try:
        console.print(f"wrote {plot_curves(runs, out)}")
    except MixDiffError as exc:
        fail(exc)
