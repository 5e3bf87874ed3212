"""What an offline evaluation reports: the accuracy metrics, and the result file every `mixdiff
eval` command writes to RUN/eval/<command>/<name>.json (the only thing `mixdiff report` reads)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

import mixdiff
from mixdiff.data.tree import fingerprint_changes
from mixdiff.errors import RunDirError
from mixdiff.evaluate.predictions import PREDICTIONS_FILE, Predictions, write_predictions
from mixdiff.io import atomic_write_text
from mixdiff.runs import RunDir, is_fingerprint, read_result_file

# every result file holds at least these keys (see the evaluation contract); `images_sha256`
# (evaluate.predictions.images_sha256) fingerprints the images scored, so pairings are checked
REQUIRED = ("command", "protocol", "online", "dataset", "split", "classes", "images",
            "images_sha256", "top1", "metric", "value", "weights", "checkpoint", "settings",
            "details")


# --- metrics: fractions in [0, 1] ----------------------------------------------------------------
def topk_accuracy(scores: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the k highest scores."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == labels.to(top.device)[:, None]).any(dim=1).float().mean().item()


def top1_accuracy(scores: Tensor, labels: Tensor) -> float:
    return topk_accuracy(scores, labels, 1)


def mean_per_class_accuracy(scores: Tensor, labels: Tensor) -> float:
    """The mean over the classes present in `labels` of each class's top-1 recall."""
    labels = labels.to(scores.device)
    correct = (scores.argmax(dim=1) == labels).float()
    present = labels.unique()
    return torch.stack([correct[labels == c].mean() for c in present]).mean().item()


# metric name in results -> how it is computed from (scores, labels)
METRICS: dict[str, Callable[[Tensor, Tensor], float]] = {
    "top1": top1_accuracy,
    "mean_per_class_accuracy": mean_per_class_accuracy,
}

TOP5_MIN_CLASSES = 6  # top-5 of 5 classes or fewer is 1 by construction: not reported


def accuracies(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """top1, and top5 where it means something."""
    found = {"top1": topk_accuracy(scores, labels, 1)}
    if scores.shape[1] >= TOP5_MIN_CLASSES:
        found["top5"] = topk_accuracy(scores, labels, 5)
    return found


# --- result files --------------------------------------------------------------------------------
def result_name(dataset: str, weights: str, default_weights: str, name: str | None = None) -> str:
    """The file name of a result: the dataset, with the weights appended when they are not the
    run's default (so a DINO run's student probe does not overwrite its teacher probe)."""
    if name:
        return name
    return dataset if weights == default_weights else f"{dataset}-{weights}"


# a result's settings record the training images' fingerprint (data.tree.fingerprint: names and
# sizes, cheap for ImageNet) under this key, so another measurement on the same --train path
# holding other images now is told apart
TRAIN_FINGERPRINT = "train_fingerprint"


def train_images_changed(result: dict, trained: dict | None) -> str | None:
    """How the training images (`trained`: their fingerprint now) differ from those `result`
    recorded, in words; None where they do not, or where either is unknown (a result written
    before mixdiff recorded them)."""
    before = result.get("settings", {}).get(TRAIN_FINGERPRINT)
    if trained is None or not is_fingerprint(before):
        return None
    return fingerprint_changes(before, trained)


def refuse_another_measurement(path: Path, measured: dict,
                               scored: tuple[int, str] | None = None,
                               trained: dict | None = None) -> None:
    """A result is not replaced by one that measured something else (another --val or --k, or
    the same --val holding other images now: `scored` is (how many, their `images_sha256`); or
    the same --train holding other images now: `trained` is their fingerprint): the report would
    show the new number as the old one's. The same measurement of a run that trained since
    replaces it. Called before any work, so that nothing is written."""
    if not path.is_file():
        return
    result = read_result(path)
    before = result.get("settings", {})
    changed = [f"{key}: {before[key]} -> {value}" for key, value in measured.items()
               if key in before and before[key] != value]
    if not changed and scored is not None and result.get("images_sha256") not in (None, scored[1]):
        changed.append(f"the images scored: {result.get('images', '?')} (sha256 "
                       f"{str(result['images_sha256'])[:12]}) -> {scored[0]} (sha256 "
                       f"{scored[1][:12]})")
    images = None if changed else train_images_changed(result, trained)
    if images:
        changed.append(f"the training images: {images}")
    if changed:
        raise RunDirError(f"{path} holds a result that measured something else ("
                          f"{'; '.join(changed)}): give --name NAME to keep both, or delete "
                          "that result")


def write_result(run: RunDir, command: str, name: str, result: dict,
                 predictions: Predictions | None = None) -> Path:
    """Write RUN/eval/<command>/<name>.json atomically, adding the run, the version and the time;
    with `predictions`, first the per-image predictions beside it (RUN/eval/<command>/<name>/
    predictions.npz), which the result names (`predictions`, relative to its own folder)."""
    missing = [key for key in REQUIRED if key not in result]
    if missing:
        raise ValueError(f"a {command} result lacks {missing}")  # a bug, not a user error
    record = {**result, "command": command, "run": str(run.root),
              "mixdiff_version": mixdiff.__version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = run.eval_result(command, name)
    if predictions is not None:
        if len(predictions.images) != result["images"]:
            raise ValueError(f"{len(predictions.images)} predictions for {result['images']} "
                             "scored images")  # a bug
        sidecar = run.eval_artifact(command, name, PREDICTIONS_FILE)
        write_predictions(sidecar, predictions)
        record["predictions"] = sidecar.relative_to(path.parent).as_posix()
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_result(path: str | Path) -> dict:
    return read_result_file(Path(path))


def print_table(results: list[dict], console: Console | None = None) -> None:
    """A short table on stderr: one row per result."""
    table = Table(show_edge=False, header_style="bold")
    for column in ("run", "command", "dataset", "split", "classes", "images", "metric", "value",
                   "top5", "weights"):
        table.add_column(column, justify="right" if column in ("classes", "images", "value",
                                                               "top5") else "left")
    for r in results:
        top5 = f"{r['top5']:.2%}" if "top5" in r else "-"
        table.add_row(Path(r.get("run", "")).name, r.get("command", ""), r["dataset"], r["split"],
                      str(r["classes"]), str(r["images"]), r["metric"], f"{r['value']:.2%}", top5,
                      r["weights"])
    table.caption = "\n".join(dict.fromkeys(f"{r['dataset']}: {r['protocol']}" for r in results))
    console = console or Console(stderr=True)
    if not console.is_terminal:  # a log file or a pipe: the whole table, not 80 columns of it
        console = Console(file=console.file, width=200)
    console.print(table)
