"""The `mixdiff` command line: one Typer app; each module below adds the commands of one area,
and each command is a thin call into the package."""

from mixdiff.cli import (  # noqa: F401  (each module registers its commands)
    attention, data, evaluate, export, generate, pretrain, quickstart, report, robustness)
from mixdiff.cli._app import app

__all__ = ["app"]
