"""Scoring the robustness suites of `mixdiff eval robustness` (their readers: `evaluate.suites`):
mask the probe's logits to the suite's classes where the suite asks for it (ImageNet-A/R,
ObjectNet, VizWiz), so a class absent from the set is never predicted, and count a prediction
correct when it is one of the image's target classes.

`corruptions` is the one suite for any classes: a labelled tree of the run's classes, corrupted on
the fly by `mixdiff.evaluate.corruptions` at each severity, each (corruption, severity) one cached
encoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import PIL.Image

from mixdiff.data.tree import images_sha256
from mixdiff.errors import ConfigError, MixDiffError, RunDirError
from mixdiff.evaluate import corruptions as corruption_lib
from mixdiff.evaluate import imagenet
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.predictions import CLEAN, Predictions
from mixdiff.evaluate.suites import (CLASS_TREE_SUITE, Selection, SuiteImages, border_crop,
                                     read_imagenet_a, read_imagenet_r, read_imagenet_sketch,
                                     read_imagenet_v2, read_labelled_tree, read_objectnet,
                                     read_vizwiz, restrict)

if TYPE_CHECKING:  # torch loads only when a suite runs: the CLI's help lists the registry fast
    from torch import Tensor
    from torchvision.transforms import v2

    from mixdiff.evaluate.features import Encoder, ImageSet
    from mixdiff.evaluate.linear import LinearProbe
    from mixdiff.runs import RunDir


# ---------------------------------------------------------------------------------- scoring
def masked_logits(logits: Tensor | np.ndarray, selection: Selection) -> np.ndarray:
    """The probe's logits (a CPU tensor or array, one row per selected image) cut to the
    selection's classes: the others can never be predicted."""
    return np.asarray(logits, dtype=np.float64)[:, selection.probe_index]


def score(logits: Tensor | np.ndarray, selection: Selection, top5: bool = True) -> dict[str, float]:
    """top1 (and top5 where asked and meaningful) of `logits` (len(selection.images), probe
    classes) over the scored images: a prediction is correct when it is one of the targets."""
    from mixdiff.evaluate.results import TOP5_MIN_CLASSES

    cut = masked_logits(logits, selection)[selection.scored]
    targets = selection.targets[selection.scored]
    if not len(cut):
        raise MixDiffError("no labelled image to score")
    found = {"top1": _topk_hit(cut, targets, 1)}
    if top5 and len(selection.classes) >= TOP5_MIN_CLASSES:
        found["top5"] = _topk_hit(cut, targets, 5)
    return found


def _topk_hit(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(targets, top, axis=1).any(axis=1).mean())


def predicted_index(logits: Tensor | np.ndarray, selection: Selection) -> np.ndarray:
    """The predicted class of each selected image, as an index into the selection's classes."""
    return masked_logits(logits, selection).argmax(1)


def predictions(logits: Tensor | np.ndarray, selection: Selection) -> list[str]:
    """The predicted class of each selected image, among the selection's classes."""
    return [selection.classes[j] for j in predicted_index(logits, selection).tolist()]


def scored_predictions(images: SuiteImages, selection: Selection,
                       by_condition: dict[str, np.ndarray]) -> Predictions:
    """The per-image predictions of the scored images (`by_condition`: predicted_index of every
    selected image), named by their paths relative to the suite's root."""
    scored = selection.scored
    names = [images.relpaths[i] for i in selection.images[scored]]
    return Predictions.of_targets(names, selection.classes, selection.targets[scored],
                                  {c: p[scored] for c, p in by_condition.items()})


def scored_sha256(images: SuiteImages, selection: Selection) -> str:
    """The fingerprint of the images a suite's result scored."""
    relpaths = [images.relpaths[i] for i in selection.images[selection.scored]]
    return images_sha256(relpaths, [str(images.root / rel) for rel in relpaths])


def vizwiz_prediction_file(images: SuiteImages, selection: Selection, predicted: list[str]
                           ) -> list[list]:
    """The file VizWiz-Classification's server takes, as its reference eval.py writes it: a JSON
    list of [image file name, predicted IN-1k index] pairs, one per image of annotations.json."""
    index = imagenet.in1k_index()
    return [[PurePosixPath(images.relpaths[i]).name, index[wnid]]
            for i, wnid in zip(selection.images.tolist(), predicted)]


def prediction_file_path(run: RunDir, name: str) -> Path:
    """RUN/eval/robustness/<name>/evalai_predictions.json, for the EvalAI server."""
    return run.eval_artifact("robustness", name, "evalai_predictions.json")


def selection_notes(images: SuiteImages, selection: Selection) -> list[str]:
    """What the restriction left out, in words, for the terminal."""
    notes = []
    if selection.unknown_folders:
        listed = ", ".join(f"{folder or '(images directly in the root)'} ({count} images)"
                           for folder, count in list(selection.unknown_folders.items())[:20])
        notes.append(f"{images.root}: {len(selection.unknown_folders)} folders are neither "
                     f"{images.suite} classes nor among the probe's classes and were not scored: "
                     f"{listed}")
    if selection.outside_probe:
        notes.append(f"{images.suite}: scored on the {len(selection.suite_classes)} classes the "
                     f"probe shares with it, {int(selection.scored.sum())} of its "
                     f"{len(images.relpaths)} images; {len(selection.outside_probe)} of its "
                     "classes are not among the probe's")
    if images.excluded_folders:
        notes.append(f"{images.suite}: {len(images.excluded_folders)} classes without an ImageNet "
                     f"counterpart ({sum(images.excluded_folders.values())} images) are left out, "
                     "as in ObjectNet's ImageNet evaluation")
    return notes


# ------------------------------------------------------------------------ the corruption view
@dataclass(frozen=True)
class CorruptionView:
    """pre_transform for Encoder.encode: the image resized by the run's own evaluation Resize (so
    that the evaluation transform's Resize leaves it as it is and only centre-crops it), then
    corrupted in the pixels the model sees, seeded by the image's relative path."""

    corruption: str
    severity: int
    keys: tuple[str, ...]  # per image position: its path relative to the root
    resize: v2.Resize
    scale: float  # the model's input side / ImageNet-C's 224

    def __call__(self, image: PIL.Image.Image, i: int) -> PIL.Image.Image:
        import torch

        tensor = self.resize(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
        seed = corruption_lib.seed_for(self.keys[i], self.corruption, self.severity)
        return corruption_lib.corrupt(tensor.permute(1, 2, 0).numpy(), self.corruption,
                                      self.severity, seed, self.scale)

    @property
    def tag(self) -> str:
        return f"corruption-v{corruption_lib.VERSION}/{self.corruption}/{self.severity}"


def eval_geometry(transform: v2.Compose) -> tuple[v2.Resize, int]:
    """The Resize of a run's evaluation transform and the side of its centre crop."""
    from torchvision.transforms import v2

    resize = next((t for t in transform.transforms if isinstance(t, v2.Resize)), None)
    crop = next((t for t in transform.transforms if isinstance(t, v2.CenterCrop)), None)
    if resize is None or crop is None:
        raise ValueError(f"the evaluation transform has no Resize + CenterCrop: {transform}")
    return resize, min(crop.size)


def grid_mean(top1: dict[str, dict[str, float]]) -> float:
    """The suite's headline top-1: the mean over corruptions of each one's mean over its
    severities. `sketch`, one rendering without severities, counts as one corruption."""
    return float(np.mean([np.mean(list(by_severity.values())) for by_severity in top1.values()]))


# ---------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Suite:
    name: str
    summary: str  # one line for --help and the result's protocol
    read: Callable[[Path], SuiteImages]
    pre_transform: Callable[[PIL.Image.Image, int], PIL.Image.Image] | None = None
    tag: str = ""  # names the pre_transform in the feature cache key
    top5: bool = True
    server_file: bool = False  # scored by an evaluation server: every image gets a prediction
    corruption_grid: bool = False  # encoded once per (corruption, severity)

    def scan(self, root: str | Path) -> SuiteImages:
        """The suite's images under `root` (made absolute: the feature cache keys on paths)."""
        return self.read(Path(root).absolute())


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("imagenet-v2", "ImageNetV2 (folders 0..999 = IN-1k class index), all probe classes",
          read_imagenet_v2),
    Suite("imagenet-sketch", "ImageNet-Sketch (wnid folders), all probe classes",
          read_imagenet_sketch),
    Suite("imagenet-a", "ImageNet-A (200 wnid folders), logits masked to the classes present",
          read_imagenet_a),
    Suite("imagenet-r", "ImageNet-R (200 wnid folders), logits masked to the classes present",
          read_imagenet_r),
    Suite("objectnet", "ObjectNet (its 113 ImageNet classes, as groups of 125 IN-1k classes), "
          "logits masked to those, 1-pixel border cropped", read_objectnet,
          pre_transform=border_crop, tag="objectnet-border-crop"),
    Suite("vizwiz", "VizWiz-Classification (multi-label: correct when in the image's label "
          "set), logits masked to its 200 categories; writes the server's prediction file",
          read_vizwiz, top5=False, server_file=True),
    Suite(CLASS_TREE_SUITE, "any labelled tree of the run's classes, corrupted on the fly after "
          "ImageNet-C (plus a sketch rendering)", read_labelled_tree, top5=False,
          corruption_grid=True),
)}


# -------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class SuiteOutcome:
    result: dict | None  # the result file's content; None when nothing could be scored (VizWiz's
    #                      public annotations carry no labels)
    prediction_file: list | None  # VizWiz: what its evaluation server takes
    selection: Selection
    predictions: Predictions | None = None  # every scored image's, per condition


def parse_corruptions(text: str | None) -> tuple[str, ...]:
    """`--corruptions a,b,...` (None: all of them, in registry order)."""
    if text is None:
        return tuple(corruption_lib.CORRUPTIONS)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in corruption_lib.CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(f"--corruptions {text!r}: unknown {', '.join(unknown) or '(empty)'}; "
                          f"choose from: {', '.join(corruption_lib.CORRUPTIONS)}")
    return names


def parse_severities(text: str) -> tuple[int, ...]:
    """`--severities 1,2,3`."""
    try:
        severities = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        severities = ()
    if not severities or not set(severities) <= set(corruption_lib.SEVERITIES):
        raise ConfigError(f"--severities {text!r}: give a comma-separated subset of "
                          f"{','.join(map(str, corruption_lib.SEVERITIES))}")
    return severities


def _image_set(images: SuiteImages, selection: Selection, name: str) -> ImageSet:
    from mixdiff.evaluate.features import ImageSet

    paths = images.paths
    return ImageSet(name=name, split=images.split,
                    paths=tuple(paths[i] for i in selection.images),
                    labels=np.full(len(selection.images), -1, dtype=np.int64),  # targets: ours
                    classes=selection.classes)


def evaluate_suite(suite: Suite, images: SuiteImages, encoder: Encoder, probe: LinearProbe,
                   corruptions: Sequence[str] = tuple(corruption_lib.CORRUPTIONS),
                   severities: Sequence[int] = corruption_lib.SEVERITIES,
                   options: EncodeOptions = EncodeOptions()) -> SuiteOutcome:
    """Score `probe` (on `encoder`'s features) on one suite's images."""
    selection = restrict(images, probe.classes, predict_all=suite.server_file)
    if suite.corruption_grid:
        return _evaluate_corruptions(images, selection, encoder, probe, corruptions, severities,
                                     options)
    features = encoder.encode(_image_set(images, selection, suite.name), suite.pre_transform,
                              suite.tag, options)
    logits = probe.logits(features).cpu()
    prediction_file = None
    if suite.server_file:
        prediction_file = vizwiz_prediction_file(images, selection, predictions(logits, selection))
        if not selection.scored.any():  # the public annotations: the server scores the file
            return SuiteOutcome(None, prediction_file, selection)
    scores = score(logits, selection, suite.top5)
    protocol = (f"offline linear probe (fitted on {probe.dataset}) on frozen features, scored on "
                f"{suite.summary}; only the {len(selection.suite_classes)} classes the probe "
                "shares with the set count")
    result = _result(suite.name, images, selection, encoder, probe, scores, protocol)
    if suite.server_file:
        result["details"]["images_predicted"] = len(selection.images)
    return SuiteOutcome(result, prediction_file, selection, scored_predictions(
        images, selection, {CLEAN: predicted_index(logits, selection)}))


def _evaluate_corruptions(images: SuiteImages, selection: Selection, encoder: Encoder,
                          probe: LinearProbe, corruptions: Sequence[str],
                          severities: Sequence[int], options: EncodeOptions) -> SuiteOutcome:
    """Each (corruption, severity) is one encoding with its own cache tag; the clean images are
    the plain encoding (the corruption view without a corruption is exactly the run's transform)."""
    dataset = images.root.parent.name
    image_set = _image_set(images, selection, dataset)
    keys = tuple(images.relpaths[i] for i in selection.images)
    resize, crop = eval_geometry(encoder.transform)
    scale = crop / corruption_lib.IMAGENET_C_SIZE

    predicted: dict[str, np.ndarray] = {}

    def top1(pre_transform=None, tag: str = "", label: str = CLEAN) -> float:
        # the split label only names the encoding in the progress bar; the cache key has the tag
        shown = replace(image_set, split=f"{image_set.split} {label}")
        features = encoder.encode(shown, pre_transform, tag, options)
        logits = probe.logits(features).cpu()
        predicted[label] = predicted_index(logits, selection)
        return score(logits, selection, top5=False)["top1"]

    clean = top1()
    grid: dict[str, dict[str, float]] = {}
    for name in corruptions:
        graded = corruption_lib.CORRUPTIONS[name].graded
        for severity in severities if graded else (0,):
            view = CorruptionView(name, severity, keys, resize, scale)
            key = str(severity) if graded else UNGRADED_KEY
            grid.setdefault(name, {})[key] = top1(view, view.tag, f"{name}/{key}")
    mean = grid_mean(grid)
    protocol = (f"offline linear probe (fitted on {probe.dataset}) on frozen features of "
                f"{dataset}/{images.split} corrupted on the fly after ImageNet-C "
                f"({len(grid)} corruptions, severities {','.join(map(str, severities))}); top1 = "
                "mean over corruptions of each one's mean over severities")
    result = _result(images.suite, images, selection, encoder, probe, {"top1": mean}, protocol)
    result["settings"].update({"corruptions": list(grid), "severities": list(severities),
                               "pixel_scale": scale, "corruption_version": corruption_lib.VERSION})
    result["details"].update({
        "dataset": dataset, "clean_top1": clean, "top1_by_corruption": grid,
        "mean_by_corruption": {n: float(np.mean(list(v.values()))) for n, v in grid.items()},
        "mean_rule": "top1 = mean over corruptions of each one's mean over its severities; "
                     f"sketch (one rendering, key {UNGRADED_KEY!r}) counts as one corruption",
    })
    return SuiteOutcome(result, None, selection, scored_predictions(images, selection, predicted))


UNGRADED_KEY = "single"  # the key of an ungraded corruption (sketch) in top1_by_corruption


def robustness_eval(encoder: Encoder, suite: Suite, images: SuiteImages,
                    probe_name: str | None = None,
                    corruptions: Sequence[str] = tuple(corruption_lib.CORRUPTIONS),
                    severities: Sequence[int] = corruption_lib.SEVERITIES,
                    options: EncodeOptions = EncodeOptions()
                    ) -> tuple[Path | None, Path | None, SuiteOutcome]:
    """`mixdiff eval robustness` for one run: score its saved probe on the suite, write the
    prediction file (VizWiz) and the result file. Returns the result file (None when the suite
    has no labels to score), the prediction file (None but for VizWiz) and the outcome."""
    from mixdiff.evaluate.linear import load_probe
    from mixdiff.evaluate.results import result_name, write_result
    from mixdiff.io import atomic_write_text

    probe = load_probe(encoder.run, probe_name, encoder.weights, encoder.checkpoint_sha256)
    name = result_name(suite.name, encoder.weights, encoder.default_weights)
    refuse_another_probes_result(encoder.run.eval_result("robustness", name), probe)
    outcome = evaluate_suite(suite, images, encoder, probe, corruptions, severities, options)
    predictions_path = None
    if outcome.prediction_file is not None:
        predictions_path = prediction_file_path(encoder.run, name)
        atomic_write_text(predictions_path, json.dumps(outcome.prediction_file) + "\n")
        if outcome.result is not None:
            outcome.result["details"]["prediction_file"] = str(predictions_path)
    if outcome.result is None:
        return None, predictions_path, outcome
    return (write_result(encoder.run, "robustness", name, outcome.result, outcome.predictions),
            predictions_path, outcome)


def refuse_another_probes_result(path: Path, probe: LinearProbe) -> None:
    """A suite's result made with one probe is not replaced by another probe's (the report would
    show the new number as if it were the old one's)."""
    if not path.is_file():
        return
    settings = json.loads(path.read_text()).get("settings", {})
    # which probe: its name (results made before it was recorded: the dataset it was fitted on)
    previous, current = (settings["probe_name"], probe.name) if settings.get("probe_name") \
        else (settings.get("probe"), probe.dataset)
    if previous is not None and previous != current:
        raise RunDirError(f"{path} holds this suite's result made with the probe {previous!r}, "
                          f"and this one is {current!r}: move that file away to keep both, or "
                          f"score with --probe {previous}")


def _result(dataset: str, images: SuiteImages, selection: Selection, encoder: Encoder,
            probe: LinearProbe, scores: dict[str, float], protocol: str) -> dict:
    return {
        "command": "robustness", "protocol": protocol, "online": False, "dataset": dataset,
        "split": images.split, "classes": len(selection.suite_classes),
        "images": int(selection.scored.sum()), "images_sha256": scored_sha256(images, selection),
        **scores, "metric": "top1",
        "value": scores["top1"], "weights": encoder.weights,
        "checkpoint": encoder.checkpoint_record(),
        "settings": {"suite": images.suite, "root": str(images.root), "probe": probe.dataset,
                     "probe_name": probe.name, "probe_classes": len(probe.classes),
                     **encoder.settings()},
        "details": {
            "classes_scored": list(selection.suite_classes),
            "logits": len(selection.classes),  # the probe outputs the predictions come from
            "masked": images.outputs is not None,
            "images_found": len(images.relpaths),
            "classes_outside_probe": len(selection.outside_probe),
            "images_not_scored": len(images.relpaths) - int(selection.scored.sum()),
            "unknown_folders": selection.unknown_folders,
            **({"excluded_folders": images.excluded_folders} if images.excluded_folders else {}),
        },
    }
