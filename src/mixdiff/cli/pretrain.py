"""`mixdiff pretrain`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mixdiff.cli._app import app, console, fail, log_to_console
from mixdiff.errors import MixDiffError


@app.command(context_settings={"allow_interspersed_args": True})
def pretrain(
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Config overrides, key=value (OmegaConf dotlist: data.synthetic=[A,B])."),
    config: Optional[Path] = typer.Option(None, "--config", help="A YAML config file."),
    out: Path = typer.Option(..., "--out", help="Run directory (re-run the same command there "
                             "to resume)."),
) -> None:
    """Pre-train an SSL method on real, synthetic or MixDiff-paired data.

    last.ckpt is saved after every epoch; SIGTERM or Ctrl-C saves where the run is and stops.
    """
    from mixdiff.pretrain.callbacks import RunInterrupted
    from mixdiff.config import load_config
    from mixdiff.runs import RunDir
    from mixdiff.pretrain.train import pretrain as run

    log_to_console()
    try:
        run(load_config(config, overrides or []), out)
    except MixDiffError as exc:
        fail(exc)
    except RunInterrupted as stop:
        console.print(f"[bold yellow]{stop}[/]", highlight=False)
        raise typer.Exit(128 + stop.signum)
    folder = RunDir(out)
    console.print(f"run written to {out}: {folder.config.name}, {folder.metrics.name}, "
                  f"{folder.last_checkpoint.relative_to(folder.root)}")
