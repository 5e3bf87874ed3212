"""`mixdiff export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mixdiff.cli._app import app, console, fail
from mixdiff.errors import MixDiffError


@app.command("export")
def export(
    run: Path = typer.Option(..., "--run", help="A `mixdiff pretrain` run folder."),
    out: Path = typer.Option(..., "--out", help="The file to write: .safetensors (recommended) "
                             "or .pt; a .json beside it says how to load it."),
    fmt: Optional[str] = typer.Option(None, "--format", help="torchvision | timm (default: "
                                      "torchvision for ResNets, timm for ViTs)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="student | teacher (default: "
                                          "teacher for runs that have one, DINO; else student)."),
) -> None:
    """Export a run's backbone as a plain state dict that torchvision / timm load with
    `load_state_dict` (strict) and no MixDiff import; the .json beside it holds the exact loading
    code and the preprocessing (resize, crop, mean, std)."""
    from mixdiff.cli.evaluate import warn_if_training
    from mixdiff.evaluate.export import export_backbone

    def loaded(encoder) -> None:
        warn_if_training(encoder, "the exported backbone",
                         "its recipe records it: source.checkpoint.unfinished")

    try:
        weights_file, recipe = export_backbone(run, out, fmt, weights, loaded)
    except MixDiffError as exc:
        fail(exc)
    console.print(f"wrote {weights_file} and {recipe} (how to load it)", highlight=False)
