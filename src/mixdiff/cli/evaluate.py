"""`mixdiff eval ...`: offline evaluation of pre-trained runs (kNN, linear probe, transfer; the
robustness suites register themselves from `mixdiff.cli.robustness`)."""

from __future__ import annotations

import typer

from mixdiff.cli._app import app

eval_app = typer.Typer(help="Evaluate pre-trained runs offline: kNN, linear probe, robustness "
                       "suites, transfer.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
