"""The one Typer app, its console, and the one way a command fails on bad input."""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

import typer
import typer.core
from rich.console import Console
from rich.logging import RichHandler

from mixdiff.errors import MixDiffError

console = Console(stderr=True, soft_wrap=True)

# what an operating-system error means for the path it names, and so what to do
PATH_PROBLEMS = {
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "this is a folder, where a file is expected",
    errno.EEXIST: "this exists already, and is not what is expected here",
    errno.EACCES: "no permission to write (or read) here",
    errno.EPERM: "no permission to write (or read) here",
    errno.EROFS: "this is on a read-only file system",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
}


def path_problem(exc: OSError) -> str:
    """One line for an error of the file system: the path, what is wrong, what to do."""
    # a rename's error names its target second: the path the user gave (an atomic write's)
    where = exc.filename2 or exc.filename or "a file"
    meaning = PATH_PROBLEMS.get(exc.errno, exc.strerror or str(exc))
    return (f"{where}: {meaning} ({exc.strerror or type(exc).__name__}); give another path "
            "(e.g. another --out), or make this one usable")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, as Ctrl-C raises KeyboardInterrupt: what it was
    writing is cleaned up on the way out (mixdiff.io's temporaries), and what stops cleanly on
    Ctrl-C (generate, the quickstart) stops so on SIGTERM too. (Python's default for SIGTERM
    ends the process at once, cleaning nothing.)"""

    signum = signal.SIGTERM


def _terminate(signum, frame) -> None:
    raise Terminated()


class MixDiffGroup(typer.core.TyperGroup):
    """Every command of the app: an error of the file system (an --out that is a file or lies
    under one, a read-only folder, a full disk) is one line naming the path, not a traceback;
    SIGTERM stops it as Ctrl-C does (`Terminated`)."""

    def invoke(self, ctx):
        main = threading.current_thread() is threading.main_thread()  # where signals arrive
        previous = signal.signal(signal.SIGTERM, _terminate) if main else None
        try:
            return super().invoke(ctx)
        except OSError as exc:
            console.print(f"[bold red]error:[/] {path_problem(exc)}", highlight=False)
            raise typer.Exit(2) from None
        except Terminated:
            console.print("[bold yellow]stopped by SIGTERM[/]", highlight=False)
            raise typer.Exit(128 + signal.SIGTERM) from None
        finally:
            if main and previous is not None:
                signal.signal(signal.SIGTERM, previous)


app = typer.Typer(help="MixDiff: self-supervised learning from real and synthetic images.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=MixDiffGroup)


# A repeated option given a shell glob (`--run runs/*`, `--images samples/*.png`) arrives as one
# value for the option and the rest as extra arguments: the commands that take such lists collect
# the rest here.
MORE = typer.Argument(None, metavar="[MORE]...", show_default=False,
                      help="More values of --run (or --images), as a shell glob gives them: "
                      "folders are runs, files are images.")


def sort_more(more: list[Path] | None) -> tuple[list[Path], list[Path]]:
    """The extra arguments of a shell glob, as (run folders, image files)."""
    more = more or []
    return [p for p in more if p.is_dir()], [p for p in more if not p.is_dir()]


def given(**options) -> dict:
    """The options the user gave (None: not given)."""
    return {name: value for name, value in options.items() if value is not None}


def fail(exc: MixDiffError) -> NoReturn:
    """Print the error's message (it names the file, key or value) and exit 2, no traceback."""
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2)


class PlainLogHandler(logging.StreamHandler):
    """Log lines for a file or a pipe as they are, `HH:MM:SS message` (rich's handler pads each
    line to the console's width), written to whatever sys.stderr is at the time."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def log_to_console(level: int = logging.INFO) -> None:
    """mixdiff's log lines (one per epoch, resume notes...) on the console, once per process:
    rich's on a terminal, plain lines in a log file. The console finds stderr when it writes, so a
    replaced stream (tests, notebooks) is honoured."""
    logger = logging.getLogger("mixdiff")
    if not any(isinstance(handler, (RichHandler, PlainLogHandler))
               for handler in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_path=False, show_level=False,
                                      markup=False, log_time_format="%H:%M:%S")
                          if console.is_terminal else PlainLogHandler())
    logger.setLevel(level)
    if not console.is_terminal:  # tables in a log file: whole rows, not an 80-column wrap
        console.width = 160
