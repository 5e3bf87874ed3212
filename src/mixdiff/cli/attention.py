"""`mixdiff attention --run RUN... --images FILE... --out FIG.png`: where ViT runs look."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mixdiff.cli._app import MORE, app, console, fail, sort_more
from mixdiff.errors import MixDiffError


@app.command("attention")
def attention(
    runs: List[Path] = typer.Option([], "--run", help="A ViT run folder; repeat --run for "
                                    "several: one figure column each (or give --model)."),
    images: List[Path] = typer.Option(..., "--images", help="An image file; repeat --images for "
                                      "several: one figure row each."),
    out: Path = typer.Option(..., "--out", help="PNG file to write (the figure: here --out is "
                             "not a results folder)."),
    model: Optional[str] = typer.Option(None, "--model", help="A timm ViT instead of a run "
                                        "(timm/vit_small_patch16_224), with --checkpoint's weights "
                                        "(DINO's official checkpoint included): one more column."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="--model's weights "
                                              "(else the library's own, from its hub)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="student | teacher (default: "
                                          "teacher where the run has one, as DINO does)."),
    threshold: float = typer.Option(0.6, "--threshold", help="Mask: the fewest patches holding "
                                    "this fraction of the head's attention (DINO: 0.6)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: the "
                                         "GPU when there is one)."),
    more: Optional[List[Path]] = MORE,
) -> None:
    """The last block's CLS self-attention of ViT runs over the same images: per run the most
    concentrated head (lowest entropy) and DINO's thresholded mask, side by side."""
    from mixdiff.evaluate.attention import encoder_attention, run_attention
    from mixdiff.evaluate.features import Encoder
    from mixdiff.data.tree import is_image
    from mixdiff.outputs import refuse_inside_images, refuse_replacing
    from mixdiff.report.attention_grid import ATTENTION_COMMAND, plot_attention
    from mixdiff.report.figures import drawn_by

    more_runs, more_images = sort_more(more)
    runs, images = [*runs, *more_runs], [*images, *more_images]
    names = ["/".join(p.parts[-2:]) for p in images]  # class folder and file: tells twins apart
    try:
        if not runs and model is None:
            raise MixDiffError("give --run RUN (a ViT run folder) or --model timm/NAME")
        if checkpoint is not None and model is None:
            raise MixDiffError("--checkpoint goes with --model (a run brings its own weights)")
        # an image's folder is its class folder (the figure names each image by both), and a
        # folder of images beside it is another class of the same tree
        folders = {f"the folder of --images {image}": image.parent for image in images}
        trees = {image.parent.parent.resolve() for image in images}
        if out.parent.parent.resolve() in trees and out.parent.is_dir() and \
                any(is_image(p.name) for p in out.parent.iterdir()):
            folders[f"{out.parent} (another class folder of the images' tree)"] = out.parent
        refuse_inside_images(out, f"--out {out}", folders)
        refuse_replacing(out, f"--out {out}", ATTENTION_COMMAND,
                         lambda p: drawn_by(p) == ATTENTION_COMMAND)
        maps = [run_attention(run, images, weights, device, threshold) for run in runs]
        if model is not None:
            encoder = Encoder.from_model(model, None, checkpoint, weights, device)
            maps.append(encoder_attention(encoder, images, encoder.model.label, threshold))
        path = plot_attention(maps, names, out)
    except MixDiffError as exc:
        fail(exc)
    console.print(f"wrote {path}")
    for run in maps:
        heads = ", ".join(f"{name}: head {m.best_head}" for name, m in zip(names, run.maps))
        console.print(f"{run.run} ({run.weights}): best heads {heads}", highlight=False)
