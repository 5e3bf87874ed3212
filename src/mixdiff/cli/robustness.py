"""`mixdiff eval robustness`: the distribution-shift suites and the on-the-fly corruptions."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from mixdiff.cli._app import MORE, console, fail
from mixdiff.cli.evaluate import (BATCH_SIZE, CHECKPOINT, DEVICE, IMAGE_SIZE, MODEL, MODEL_OUT,
                                  NUM_WORKERS, PIXELS, RUNS, WEIGHTS, _sources, eval_app)
from mixdiff.errors import MixDiffError
from mixdiff.evaluate.corruptions import CORRUPTIONS, SEVERITIES
from mixdiff.evaluate.robustness import SUITES

SuiteName = Enum("SuiteName", {name: name for name in SUITES}, type=str)

HELP = (
    "Score runs' saved linear probes on a distribution-shift suite, read in its own layout. "
    "The probe comes from `mixdiff eval linear`; a probe of some ImageNet classes (ImageNet-100) "
    "is scored on the classes it shares with the suite. Writes RUN/eval/robustness/SUITE.json."
    "\n\n" + "\n\n".join(f"{s.name}: {s.summary}." for s in SUITES.values()))


@eval_app.command("robustness", help=HELP)
def robustness(
    runs: List[Path] = RUNS,
    suite: SuiteName = typer.Option(..., "--suite", help="The test set (see above)."),
    root: Path = typer.Option(..., "--root", help="The suite's folder, in its own layout."),
    probe: Optional[str] = typer.Option(None, "--probe", help="The probe to use when a run has "
                                        "several (the dataset it was fitted on)."),
    weights: Optional[str] = WEIGHTS,
    pixels: bool = PIXELS,
    model: Optional[str] = MODEL,
    checkpoint: Optional[Path] = CHECKPOINT,
    out: Optional[Path] = MODEL_OUT,
    image_size: Optional[int] = IMAGE_SIZE,
    device: Optional[str] = DEVICE,
    corruptions: Optional[str] = typer.Option(
        None, "--corruptions", help=f"--suite corruptions: a comma-separated subset of "
        f"{', '.join(CORRUPTIONS)} (default: all)."),
    severities: str = typer.Option(",".join(map(str, SEVERITIES)), "--severities",
                                   help="--suite corruptions: the severities to run."),
    batch_size: int = BATCH_SIZE,
    num_workers: Optional[int] = NUM_WORKERS,
    more: Optional[List[Path]] = MORE,
) -> None:
    from mixdiff.evaluate.results import print_table
    from mixdiff.evaluate.options import EncodeOptions
    from mixdiff.evaluate.robustness import (parse_corruptions, parse_severities,
                                             robustness_eval, selection_notes)

    sources = _sources(runs, more, model, checkpoint, out, image_size, pixels, weights)
    try:
        options = EncodeOptions(batch_size, num_workers)
        spec = SUITES[suite.value]
        chosen, levels = parse_corruptions(corruptions), parse_severities(severities)
        images = spec.scan(root)
        results = []
        for encoder in sources.encoders(weights, device):
            run = encoder.run.root
            path, predictions, outcome = robustness_eval(encoder, spec, images, probe, chosen,
                                                         levels, options)
            for note in selection_notes(images, outcome.selection):
                console.print(f"[yellow]{run}:[/] {note}", highlight=False)
            if predictions is not None:
                console.print(f"{run}: prediction file for the VizWiz-Classification server "
                              f"(EvalAI): {predictions}", highlight=False)
            if path is None:
                console.print(f"{run}: {images.root} has no labels (the public annotations "
                              "withhold them): upload the prediction file to be scored; no "
                              "result file written", highlight=False)
                continue
            results.append({**outcome.result, "run": str(encoder.run.root)})
    except MixDiffError as exc:
        fail(exc)
    if results:
        print_table(results)
