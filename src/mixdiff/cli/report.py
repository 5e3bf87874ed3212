"""`mixdiff report RUN... --out DIR`: tables and figures of runs, from the files they wrote."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from mixdiff.cli._app import app, console, fail
from mixdiff.errors import MixDiffError
from mixdiff.report.compare import EQUIVALENCE_MARGIN
from mixdiff.report.results import SPREADS


@app.command("report")
def report(
    runs: List[Path] = typer.Argument(..., help="Run folders of `mixdiff pretrain` (seeds of one "
                                      "setting are averaged: give them all)."),
    out: Path = typer.Option(..., "--out", help="Folder to write results.md/.csv/.json and the "
                             "figures into."),
    spread: str = typer.Option("std", "--spread", help="Spread over seeds: "
                               + "; ".join(f"{k}: {v}" for k, v in SPREADS.items()) + "."),
    pair_rows: int = typer.Option(6, "--pair-rows", min=1, help="Images in pairs.png."),
    equivalence: float = typer.Option(EQUIVALENCE_MARGIN, "--equivalence", min=0.0, max=1.0,
                                      help="A comparison whose whole 95% interval "
                                      "lies within ±this fraction (0.01: 1 point) is reported as "
                                      "no difference larger than it."),
) -> None:
    """Tables (results.md/.csv/.json), the in-distribution vs. shift figure (id_vs_ood.png), a
    per-dataset radar (radar.png), training curves (curves.png) and real/synthetic pairs
    (pairs.png) of runs. Reads only the run folders' files: no model, no GPU."""
    from mixdiff.report.build import write_report

    try:
        written = write_report(runs, out, spread, pair_rows, equivalence)
    except MixDiffError as exc:
        fail(exc)
    for path in written.files:
        console.print(f"wrote {path}")
    for note in written.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
