"""`mixdiff eval ...`: offline evaluation of pre-trained runs (kNN, linear probe, transfer; the
robustness suites register themselves from `mixdiff.cli.robustness`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import typer

from mixdiff.cli._app import MORE, app, console, fail
from mixdiff.errors import MixDiffError
from mixdiff.evaluate.features import WEIGHT_PREFIXES
from mixdiff.evaluate.options import EncodeOptions, KnnOptions
from mixdiff.evaluate.transfer import TRANSFER_DATASETS
from mixdiff.knn import DEFAULT_KS, DEFAULT_TEMPERATURE
from mixdiff.runs import checked_result_name

eval_app = typer.Typer(help="Evaluate pre-trained runs offline: kNN, linear probe, robustness "
                       "suites, transfer. Each writes RUN/eval/<command>/<dataset>.json and "
                       "prints a table.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

TransferName = Enum("TransferName", {name: name for name in TRANSFER_DATASETS}, type=str)

# options every `mixdiff eval` command shares (Typer reads these defaults afresh per command)
RUNS = typer.Option([], "--run", help="A `mixdiff pretrain` run folder (repeat --run for "
                    "several), or give --model.")
MODEL = typer.Option(None, "--model", help="Evaluate anyone's encoder instead of a run: a timm "
                     "or torchvision network, timm/NAME (timm/resnet50, "
                     "timm/vit_small_patch16_224) or torchvision/NAME (torchvision/resnet50), "
                     "with the weights of --checkpoint (else the library's own, from its hub: "
                     "not offline). Its results go to --out.")
CHECKPOINT = typer.Option(None, "--checkpoint", help="--model's weights: a plain state dict, a "
                          "Lightning checkpoint of solo-learn or lightly, or DINO's official "
                          "checkpoint (the teacher; --weights student for the student). Read "
                          "with weights_only=True: a file that would run code is refused.")
MODEL_OUT = typer.Option(None, "--out", help="--model: the folder its results go to, laid out as "
                         "a run's (eval/<command>/<name>.json); `mixdiff report RUN... DIR` "
                         "shows it beside runs, named by the model.")
IMAGE_SIZE = typer.Option(None, "--image-size", min=1, help="--model: the crop size to evaluate "
                          "at (default: the model's own; the resize keeps its ratio).")
WEIGHTS = typer.Option(None, "--weights", help=f"{' | '.join(WEIGHT_PREFIXES)} (default: teacher "
                       "for runs that have one, DINO; else student). Non-default weights are "
                       "written as <dataset>-<weights>.json.")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: the GPU when there is "
                      "one).")
BATCH_SIZE = typer.Option(EncodeOptions.batch_size, "--batch-size",
                          help="Images per encoding batch.")
NUM_WORKERS = typer.Option(None, "--num-workers", help="Image decoding processes (default: up "
                           "to 8).")
TRAIN = typer.Option(..., "--train", help="The training tree <class>/<image>.")
VAL = typer.Option(..., "--val", help="The tree scored, with the same classes; the folder above "
                   "it names the dataset (data/fashion-mnist/test -> fashion-mnist).")


def _file_name(name: str | None) -> str | None:
    """--name, refused before any work unless it is a plain file name (never a path, nor one
    ending in a result file's suffix)."""
    try:
        return name if name is None else checked_result_name(name, "--name")
    except MixDiffError as exc:
        fail(exc)


NAME = typer.Option(None, "--name", callback=_file_name, help="The result's file name, without "
                    "a folder (default: the dataset's).")
PIXELS = typer.Option(False, "--pixels", help="Score the raw pixels instead of the run's encoder: "
                      "the evaluation images resized, cropped and normalised as for the run, "
                      "flattened (a floor that needs no training; cheap for small images). "
                      "Written as <name>-pixels.json in the run (robustness: scored by the probe "
                      "that `eval linear --pixels` fitted); `mixdiff report` shows it as "
                      "`pixels`.")


def _checked(options: type, *values):
    """Options made, and so checked, before any work (a warm feature cache would not use them):
    a bad number is one line naming its option."""
    try:
        return options(*values)
    except MixDiffError as exc:
        fail(exc)


def _trees(train: Path, val: Path, ks: Sequence[int] = ()):
    from mixdiff.evaluate.features import evaluation_warnings, labelled_sets

    try:
        train_set, val_set = labelled_sets(train, val)
    except MixDiffError as exc:
        fail(exc)
    for note in evaluation_warnings(train, val, train_set, ks):
        console.print(f"[bold yellow]warning:[/] {note}", highlight=False)
    return train_set, val_set


def _sources(runs, more, model, checkpoint, out, image_size, pixels, weights) -> Sources:
    """The encoders' sources, their options checked together before any work."""
    sources = Sources([*runs, *(more or [])], model, checkpoint, out, image_size, pixels)
    try:
        sources.check(weights)
    except MixDiffError as exc:
        fail(exc)
    return sources


def warn_if_training(encoder, made: str = "this result",
                     recorded: str = "`mixdiff report` marks it") -> None:
    """A run still being trained gives an early result (or export: `made`): said here, and
    recorded in what is written (its checkpoint's `unfinished`: `recorded` says where)."""
    unfinished = encoder.unfinished()
    if unfinished:
        console.print(f"[bold yellow]warning:[/] {encoder.run.root} is still being trained "
                      f"({unfinished['trained_by']}): {made} is of epoch "
                      f"{unfinished['epoch']} of {unfinished['max_epochs']} and will be out of "
                      f"date when the run goes on ({recorded})", highlight=False)


@dataclass(frozen=True)
class Sources:
    """What `mixdiff eval` evaluates: run folders, their raw pixels, or one external model."""

    runs: list[Path]
    model: str | None = None
    checkpoint: Path | None = None
    out: Path | None = None
    image_size: int | None = None
    pixels: bool = False

    def check(self, weights: str | None) -> None:
        """One line, before any work, for options that do not go together."""
        if self.model is None:
            if not self.runs:
                raise MixDiffError("give --run RUN (a `mixdiff pretrain` run folder) or --model "
                                   "NAME (timm/NAME, torchvision/NAME)")
            extra = [o for o, v in (("--checkpoint", self.checkpoint), ("--out", self.out),
                                    ("--image-size", self.image_size)) if v is not None]
            if extra:
                raise MixDiffError(f"{', '.join(extra)} go with --model (a run brings its own "
                                   "weights, transform and folder)")
        elif self.runs or self.pixels:
            raise MixDiffError("--model evaluates one external encoder: drop --run and --pixels "
                               "(evaluate runs in a command of their own)")
        elif self.out is None:
            raise MixDiffError("--model needs --out DIR: the folder its results go to")
        if self.pixels and weights is not None:
            raise MixDiffError(f"--pixels scores no weights: drop --weights {weights}")

    def encoders(self, weights: str | None, device: str | None) -> Iterator:
        """Each encoder, built when its turn comes (a bad run is named when it is reached)."""
        from mixdiff.evaluate.features import Encoder

        self.check(weights)
        if self.model is not None:
            yield Encoder.from_model(self.model, self.out, self.checkpoint, weights, device,
                                     self.image_size)
            return
        for run in self.runs:
            encoder = Encoder.pixels(run, device) if self.pixels else \
                Encoder.from_run(run, weights, device)
            warn_if_training(encoder)
            yield encoder


def _for_each_run(sources: Sources, weights: str | None, device: str | None,
                  evaluate: Callable) -> None:
    """Run `evaluate(encoder)` for each encoder, print the table, fail with one line on bad
    input."""
    from mixdiff.evaluate.results import print_table, read_result

    results = []
    try:
        for encoder in sources.encoders(weights, device):
            if encoder.model is not None and encoder.model.loaded:
                for note in encoder.model.loaded.notes():
                    console.print(f"{encoder.model.label}: {note}", highlight=False)
            path = evaluate(encoder)
            results.append(read_result(path))
            console.print(f"wrote {path}", highlight=False)
    except MixDiffError as exc:
        fail(exc)
    print_table(results, console)


@eval_app.command("knn")
def knn(
    runs: List[Path] = RUNS,
    train: Path = TRAIN,
    val: Path = VAL,
    name: Optional[str] = NAME,
    ks: List[int] = typer.Option(list(DEFAULT_KS), "--k", help="Neighbours (repeat for several; "
                                 "the first is the headline)."),
    temperature: float = typer.Option(DEFAULT_TEMPERATURE, "--temperature",
                                      help="Vote weight exp(cosine / T)."),
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
    batch_size: int = BATCH_SIZE,
    num_workers: Optional[int] = NUM_WORKERS,
    pixels: bool = PIXELS,
    model: Optional[str] = MODEL,
    checkpoint: Optional[Path] = CHECKPOINT,
    out: Optional[Path] = MODEL_OUT,
    image_size: Optional[int] = IMAGE_SIZE,
    more: Optional[List[Path]] = MORE,
) -> None:
    """Weighted kNN on frozen features (DINO's protocol: cosine, T=0.07, k=20 and k=200).
    Writes RUN/eval/knn/<name>.json; features are cached in RUN/cache/features."""
    from mixdiff.evaluate.knn import knn_eval

    neighbours = _checked(KnnOptions, list(ks), temperature)
    options = _checked(EncodeOptions, batch_size, num_workers)
    sources = _sources(runs, more, model, checkpoint, out, image_size, pixels, weights)
    train_set, val_set = _trees(train, val, neighbours.k)
    _for_each_run(sources, weights, device, lambda encoder: knn_eval(
        encoder, train_set, val_set, name, neighbours.k, neighbours.temperature, options))


@eval_app.command("linear")
def linear(
    runs: List[Path] = RUNS,
    train: Path = TRAIN,
    val: Path = VAL,
    name: Optional[str] = NAME,
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
    batch_size: int = BATCH_SIZE,
    num_workers: Optional[int] = NUM_WORKERS,
    pixels: bool = PIXELS,
    model: Optional[str] = MODEL,
    checkpoint: Optional[Path] = CHECKPOINT,
    out: Optional[Path] = MODEL_OUT,
    image_size: Optional[int] = IMAGE_SIZE,
    more: Optional[List[Path]] = MORE,
) -> None:
    """Offline linear probe: L-BFGS logistic regression on frozen, standardised features, its
    weight decay chosen on a stratified 20% of the training images, scored on --val (top-1,
    top-5). Writes RUN/eval/linear/<name>.json and the probe RUN/eval/linear/<name>.probe.pt
    (used by `mixdiff eval robustness`)."""
    from mixdiff.evaluate.linear import linear_eval

    options = _checked(EncodeOptions, batch_size, num_workers)
    sources = _sources(runs, more, model, checkpoint, out, image_size, pixels, weights)
    train_set, val_set = _trees(train, val)
    _for_each_run(sources, weights, device, lambda encoder: linear_eval(
        encoder, train_set, val_set, name, options=options))


@eval_app.command("transfer", help=(
    "Linear transfer by SynCLR's protocol: frozen features, L-BFGS logistic regression, the "
    "weight decay swept on a val split, refit on train+val, scored once on test. Writes "
    "RUN/eval/transfer/<dataset>.json. Datasets (read with torchvision from --root):\n\n"
    + "\n\n".join(f"{name}: {spec.describe()}, in ROOT/{spec.folder}"
                  for name, spec in TRANSFER_DATASETS.items())))
def transfer(
    runs: List[Path] = RUNS,
    dataset: TransferName = typer.Option(..., "--dataset", help="The transfer dataset."),
    root: Path = typer.Option(..., "--root", help="The folder torchvision reads the dataset "
                              "from (and downloads it to, with --download)."),
    download: bool = typer.Option(False, "--download", help="Download the dataset into --root "
                                  "when it is not there (never without this flag)."),
    name: Optional[str] = NAME,
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
    batch_size: int = BATCH_SIZE,
    num_workers: Optional[int] = NUM_WORKERS,
    model: Optional[str] = MODEL,
    checkpoint: Optional[Path] = CHECKPOINT,
    out: Optional[Path] = MODEL_OUT,
    image_size: Optional[int] = IMAGE_SIZE,
    more: Optional[List[Path]] = MORE,
) -> None:
    from mixdiff.evaluate.transfer import transfer_eval

    options = _checked(EncodeOptions, batch_size, num_workers)
    sources = _sources(runs, more, model, checkpoint, out, image_size, False, weights)
    _for_each_run(sources, weights, device, lambda encoder: transfer_eval(
        encoder, dataset.value, root, download, result=name, options=options))
