"""Every scored image's prediction, kept beside its result, and the fingerprint of the images.

`mixdiff eval knn|linear|robustness` write RUN/eval/<command>/<name>/predictions.npz beside
RUN/eval/<command>/<name>.json (one folder down, so that the report never reads it as a result):
for each condition the result scored (`clean`; kNN: `k=20`, `k=200`; the corruptions suite:
`gaussian_noise/3`, ..., `sketch/single`), every image's predicted class and whether it was right.
Two runs scored on the same images can then be compared image by image, which is what an interval
that counts the test images' noise needs (`mixdiff.report.inference`).

A result records `images_sha256`, the fingerprint of the images it scored (each one's path
relative to the scored folder, and its bytes): two results pair only when theirs are equal.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mixdiff.errors import RunDirError
from mixdiff.io import atomic_open

PREDICTIONS_FILE = "predictions.npz"
CLEAN = "clean"  # the condition of images scored as they are


def knn_condition(k: int) -> str:
    return f"k={k}"


@dataclass(frozen=True)
class Predictions:
    """What one result predicted, image by image."""

    images: tuple[str, ...]  # each scored image's path relative to the scored folder
    classes: tuple[str, ...]  # the classes `predicted` and `labels` index
    labels: np.ndarray  # (N,) the image's class (its first target where it has several)
    conditions: tuple[str, ...]
    predicted: np.ndarray  # (C, N) predicted class per condition and image
    correct: np.ndarray  # (C, N) bool: the prediction is (one of) the image's class(es)

    def __post_init__(self) -> None:
        shape = (len(self.conditions), len(self.images))
        if self.predicted.shape != shape or self.correct.shape != shape or \
                self.labels.shape != (len(self.images),):
            raise ValueError(f"predictions of {shape} (conditions, images) expected, got "
                             f"{self.predicted.shape}, {self.correct.shape}, {self.labels.shape}")

    def correct_of(self, condition: str) -> np.ndarray:
        if condition not in self.conditions:
            raise KeyError(f"no condition {condition!r} among {', '.join(self.conditions)}")
        return self.correct[self.conditions.index(condition)]

    @classmethod
    def single(cls, images: Sequence[str], classes: Sequence[str], labels: np.ndarray,
               by_condition: dict[str, np.ndarray]) -> "Predictions":
        """Single-label images: correct where the predicted class is the label."""
        labels = np.asarray(labels, dtype=np.int64)
        predicted = np.stack([np.asarray(p, dtype=np.int64) for p in by_condition.values()])
        return cls(tuple(images), tuple(classes), labels, tuple(by_condition), predicted,
                   predicted == labels[None, :])


    @classmethod
    def of_targets(cls, images: Sequence[str], classes: Sequence[str], targets: np.ndarray,
                   by_condition: dict[str, np.ndarray]) -> "Predictions":
        """Images with one or more target classes (`targets`, bool (N, classes)): correct where
        the predicted class is one of them; the label kept is the first."""
        targets = np.asarray(targets, dtype=bool)
        predicted = np.stack([np.asarray(p, dtype=np.int64) for p in by_condition.values()])
        correct = np.take_along_axis(targets.T, predicted, axis=0) if len(images) else \
            np.zeros(predicted.shape, dtype=bool)
        labels = np.where(targets.any(1), targets.argmax(1), -1)
        return cls(tuple(images), tuple(classes), labels, tuple(by_condition), predicted, correct)


def write_predictions(path: Path, predictions: Predictions) -> None:
    """A compressed .npz (class indices as int16, correctness as bool), written atomically."""
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, images=np.array(predictions.images, dtype=str),
                            classes=np.array(predictions.classes, dtype=str),
                            labels=predictions.labels.astype(np.int16),
                            conditions=np.array(predictions.conditions, dtype=str),
                            predicted=predictions.predicted.astype(np.int16),
                            correct=predictions.correct.astype(bool))


def read_predictions(path: str | Path) -> Predictions:
    """The predictions file of a result, or one line saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} is missing: the result beside it was made without per-image "
                          "predictions (before they were kept); evaluate the run again")
    try:  # allow_pickle=False: text arrays only, nothing in the file can run code
        with np.load(path, allow_pickle=False) as saved:
            return Predictions(tuple(saved["images"].tolist()), tuple(saved["classes"].tolist()),
                               saved["labels"].astype(np.int64),
                               tuple(saved["conditions"].tolist()),
                               saved["predicted"].astype(np.int64), saved["correct"].astype(bool))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise RunDirError(f"{path} cannot be read as per-image predictions "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                          "evaluate the run again to rewrite it") from None


def predictions_of(path: str | Path, result: dict | None = None) -> Predictions:
    """The per-image predictions of the result file at `path` (its content, unless given)."""
    path = Path(path)
    result = result if result is not None else json.loads(path.read_text())
    if not result.get("predictions"):
        raise RunDirError(f"{path} was written without per-image predictions (before they were "
                          "kept): evaluate the run again")
    return read_predictions(path.parent / result["predictions"])


def per_image_scores(result: dict, predictions: Predictions) -> np.ndarray:
    """Each scored image's share of the result's headline number, so that their mean is the
    result's `value`: right or wrong (1 or 0) under the headline condition (kNN: the first k),
    or, for the corruptions suite, the mean over corruptions of each one's mean over severities
    (its top-1 rule, image by image)."""
    if result["command"] == "knn":
        return predictions.correct_of(knn_condition(result["settings"]["k"][0])).astype(float)
    grid = result.get("details", {}).get("top1_by_corruption")
    if result["command"] == "robustness" and grid:
        return np.mean([np.mean([predictions.correct_of(f"{name}/{key}") for key in severities],
                                axis=0) for name, severities in grid.items()], axis=0)
    return predictions.correct_of(CLEAN).astype(float)
