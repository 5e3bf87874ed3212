"""`mixdiff pretrain`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from mixdiff.cli._app import app, console, fail
from mixdiff.errors import MixDiffError


@app.command(context_settings={"allow_interspersed_args": True})
def pretrain(
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Config overrides, key=value (OmegaConf dotlist: data.synthetic=[A,B])."),
    config: Optional[Path] = typer.Option(None, "--config", help="A YAML config file."),
    out: Path = typer.Option(..., "--out", help="Run directory (re-run the same command there "
                             "to resume)."),
) -> None:
    """Pre-train an SSL method on real, synthetic or MixDiff-paired data."""
    from mixdiff.config import load_config
    from mixdiff.train import pretrain as run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config, overrides or [])
        run(cfg, out)
    except MixDiffError as exc:
        fail(exc)
    console.print(f"run written to {out}: config.yaml, metrics.csv, checkpoints/last.ckpt")
