"""The one Typer app, its console, and the one way a command fails on bad input."""

from __future__ import annotations

import logging
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

from mixdiff.errors import MixDiffError

app = typer.Typer(help="MixDiff: self-supervised learning from real and synthetic images.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True, soft_wrap=True)


def fail(exc: MixDiffError) -> NoReturn:
    """Print the error's message (it names the file, key or value) and exit 2, no traceback."""
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2)


def log_to_console(level: int = logging.INFO) -> None:
    """mixdiff's log lines (one per epoch, resume notes...) on the console, once per process.
    The console finds stderr when it writes, so a replaced stream (tests, notebooks) is honoured."""
    logger = logging.getLogger("mixdiff")
    if not any(isinstance(handler, RichHandler) for handler in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_path=False, show_level=False,
                                      markup=False, log_time_format="%H:%M:%S"))
    logger.setLevel(level)
    if not console.is_terminal:  # a log file: whole lines, not an 80-column wrap
        console.width = 160
