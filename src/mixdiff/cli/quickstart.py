"""`mixdiff quickstart`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mixdiff.cli._app import app, console, fail, log_to_console
from mixdiff.errors import MixDiffError
from mixdiff.quickstart import METHODS, MODES, PAPER_MODES, PRESETS

_DEFAULT, _FAST, _GPU = PRESETS["default"], PRESETS["fast"], PRESETS["gpu"]


def _names(text: Optional[str]) -> Optional[tuple]:
    """'a, b,a' -> ('a', 'b'); checked with the other settings."""
    if text is None:
        return None
    return tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


@app.command()
def quickstart(
    out: Path = typer.Option(Path("quickstart"), "--out", help="Where everything goes; run the "
                             "same command again to resume."),
    fast: bool = typer.Option(False, "--fast", help="A smoke check of every stage (about 3 min "
                              "on a 2-core CPU): far too short to learn, so it makes no claim "
                              "about learning or about MixDiff."),
    methods: Optional[str] = typer.Option(None, "--methods", help=f"Comma-separated, from "
                                          f"{','.join(METHODS)} (default: simclr on a CPU, all "
                                          "three with --device cuda)."),
    modes: Optional[str] = typer.Option(None, "--modes", help=f"Comma-separated, from "
                                        f"{','.join(MODES)} (default: "
                                        f"{','.join(_DEFAULT.modes)}; the paper's four, "
                                        f"{','.join(PAPER_MODES)}, with --fast or --device "
                                        "cuda). extra adds a twin's view to the real views."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per run setting."),
    device: str = typer.Option(_DEFAULT.device, "--device", help="cpu, or cuda: the whole "
                               "training set and more epochs."),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="Training (and, unless "
                                            "--test-per-class, test) images per class "
                                            f"(default: {_DEFAULT.per_class}; "
                                            f"{_FAST.per_class} with --fast; all with --device "
                                            "cuda)."),
    test_per_class: Optional[int] = typer.Option(
        None, "--test-per-class", help="Test images per class that every evaluation scores "
        "(default: as --per-class); 1000 is the whole test split of 10,000 images: intervals "
        "about 3x narrower on the test images' part of the noise."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help=f"Default: "
                                         f"{_DEFAULT.epochs}; {_FAST.epochs} with --fast; "
                                         f"{_GPU.epochs} with --device cuda."),
    strength: Optional[str] = typer.Option(None, "--strength", help="SDEdit strength of the "
                                           f"embedded generator (default: {_DEFAULT.strength}: "
                                           "it keeps the class best; see README); a list "
                                           "(0.2,0.3,0.5) is a mixture: each image draws one."),
    real_fraction: Optional[float] = typer.Option(None, "--real-fraction", help="Train on this "
                                                  "stratified fraction of the real images (the "
                                                  "paper's 'less real data')."),
    augment: Optional[str] = typer.Option(None, "--augment", help="none: no augmentation at "
                                          "all (the paper's surprising result)."),
    synthetic_weight: Optional[float] = typer.Option(
        None, "--synthetic-weight", help="extra mode: lambda, the weight of the positive pairs "
        "that include the twin (default: 1)."),
    equivalence: Optional[float] = typer.Option(
        None, "--equivalence", help="The verdict's margin, a fraction (default: "
        f"{_DEFAULT.equivalence:g}, 1 point): a comparison whose whole 95% interval lies "
        "within ±it is 'no difference larger than' it."),
    min_similarity: Optional[float] = typer.Option(
        None, "--filter", help="Score every twin with the real run of each seed (cosine of its "
        "features of twin and real image), then train the other modes without the twins below "
        "this similarity (the scores: OUT/synthetic/scores-<method>-s<seed>.csv)."),
) -> None:
    """The paper's experiment on Fashion-MNIST, offline: prepare, generate SDEdit twins,
    pre-train in each data mode and the untrained reference, evaluate (linear, kNN,
    corruptions; raw pixels), report, and a verdict: each mode's gain over the untrained encoder
    and MixDiff − real, paired by seed with 95% intervals."""
    from mixdiff.generate.settings import parse_values
    from mixdiff.quickstart import QuickstartInterrupted, settings_for
    from mixdiff.quickstart import quickstart as run

    log_to_console()
    try:
        preset = "fast" if fast else "gpu" if device == "cuda" else "default"
        settings = settings_for(preset, methods=_names(methods), modes=_names(modes), seeds=seeds,
                                per_class=per_class, test_per_class=test_per_class,
                                epochs=epochs,
                                strength=None if strength is None else parse_values(
                                    strength, float, "--strength"),
                                real_fraction=real_fraction, augment=augment, device=device,
                                synthetic_weight=synthetic_weight, equivalence=equivalence,
                                min_similarity=min_similarity)
        outcome = run(out, settings, console)
    except MixDiffError as exc:
        fail(exc)
    except QuickstartInterrupted as stop:
        console.print(f"[bold yellow]{stop}[/]", highlight=False)
        raise typer.Exit(128 + stop.signum)
    console.print(f"\nreport: {out / 'report' / 'results.md'} (and its figures); everything: "
                  f"{out / 'quickstart.json'}; {outcome.seconds / 60:.1f} min", highlight=False)
    for line in outcome.verdict:
        console.print(line, highlight=False)
