"""The `mixdiff` command line: one Typer app; each module below adds the commands of one area,
and each command is a thin call into the package."""

from mixdiff.cli import data, generate, pretrain, report  # noqa: F401  (registers the commands)
from mixdiff.cli._app import app

__all__ = ["app"]
