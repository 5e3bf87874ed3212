"""The robustness suites of `mixdiff eval robustness`: read each test set in its own on-disk
layout, restrict it to the classes a run's linear probe knows, mask the probe's logits, score.

A suite reader turns a folder into `SuiteImages`: every image with its labels in the suite's own
classes (a wnid, an ObjectNet label, a VizWiz label set), and for each suite class the run classes
that count as it (`groups`: ObjectNet's 'Chair' -> three IN-1k chairs). `restrict` then keeps what
the probe can answer: a probe fitted on ImageNet-100 is scored on the 15 classes it shares with
ImageNet-A, and the result says so. The logits are cut to the suite's classes (`outputs`) where the
suite asks for it (ImageNet-A/R, ObjectNet, VizWiz), so a class absent from the set is never
predicted, and a prediction is correct when it is one of the image's target classes.

`corruptions` is the one suite for any classes: a labelled tree of the run's classes, corrupted on
the fly by `mixdiff.evaluate.corruptions` at each severity, each (corruption, severity) one cached
encoding.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import PIL.Image

from mixdiff.data.tree import list_images
from mixdiff.errors import ConfigError, DatasetError, MixDiffError, RunDirError
from mixdiff.evaluate import corruptions as corruption_lib
from mixdiff.evaluate import imagenet

if TYPE_CHECKING:  # torch loads only when a suite runs: the CLI's help lists the registry fast
    from torch import Tensor
    from torchvision.transforms import v2

    from mixdiff.evaluate.features import Encoder, ImageSet
    from mixdiff.evaluate.linear import LinearProbe
    from mixdiff.runs import RunDir

OBJECTNET_BORDER = 1  # ObjectNet images carry a 1-pixel border; it is cropped before evaluation
VIZWIZ_ANNOTATIONS = "annotations.json"  # the dataset's file: categories + image names
VIZWIZ_LABELS = "labels.json"  # optional ground truth {image: [IN-1k indices]} (not public)
VIZWIZ_IMAGES = "images"


class SuiteLayoutError(DatasetError):
    """A folder that is not in the layout the chosen suite expects."""


@dataclass(frozen=True)
class SuiteImages:
    """The images a suite found under its root, labelled in the suite's own classes."""

    suite: str
    root: Path
    split: str
    relpaths: tuple[str, ...]  # relative to root (the VizWiz prediction file names them so)
    labels: tuple[frozenset[str], ...]  # each image's suite classes; empty = unlabelled
    groups: dict[str, frozenset[str]]  # suite class -> the run classes that count as it
    outputs: frozenset[str] | None  # the classes the logits are masked to; None = no mask
    unmapped: frozenset[str] = frozenset()  # suite classes named by a folder the mapping lacks
    unknown_folders: dict[str, int] = field(default_factory=dict)  # folder -> images, unusable
    excluded_folders: dict[str, int] = field(default_factory=dict)  # known, no ImageNet class

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(str(self.root / rel) for rel in self.relpaths)


@dataclass(frozen=True)
class Selection:
    """What of a suite a probe can be scored on."""

    classes: tuple[str, ...]  # the probe classes the logits are cut to, in probe order
    probe_index: np.ndarray  # their positions in the probe's output
    images: np.ndarray  # positions in SuiteImages of the images to encode
    targets: np.ndarray  # bool (len(images), len(classes)): the classes that count as correct
    suite_classes: tuple[str, ...]  # suite classes scored (with at least one image)
    outside_probe: tuple[str, ...]  # suite classes the probe has no class for
    unknown_folders: dict[str, int]  # neither in the suite's mapping nor in the probe: listed

    @property
    def scored(self) -> np.ndarray:
        """Which of `images` have a target (VizWiz predicts unlabelled images too)."""
        return self.targets.any(axis=1)


# --------------------------------------------------------------------------- reading the disk
def _folders(root: Path) -> dict[str, list[str]]:
    """{first folder: relative image paths}; images directly under root are under ''."""
    by_folder: dict[str, list[str]] = {}
    for rel in list_images(root):
        folder = rel.split("/", 1)[0] if "/" in rel else ""
        by_folder.setdefault(folder, []).append(rel)
    return by_folder


def _describe(names: Sequence[str]) -> str:
    """What kind of folders these are, for a layout error."""
    wnids = [n for n in names if imagenet.is_wnid(n)]
    numbers = [n for n in names if n.isdigit()]
    objectnet = [n for n in names if n in imagenet.objectnet_folder_labels()]
    kinds = [(wnids, "named by ImageNet wnid (the layout of imagenet-sketch, imagenet-a, "
                     "imagenet-r)"),
             (numbers, "named by class index (ImageNetV2's layout: --suite imagenet-v2)"),
             (objectnet, "named by ObjectNet class (--suite objectnet)")]
    found = [f"{len(group)} folders {what}, e.g. {', '.join(sorted(group)[:3])}"
             for group, what in kinds if group]
    other = sorted(set(names) - set(wnids) - set(numbers) - set(objectnet) - {""})
    if other:
        found.append(f"{len(other)} other folders, e.g. {', '.join(other[:3])}")
    if "" in names:
        found.append("images directly in the folder")
    return "; ".join(found) or "no images"


def _layout_error(suite: str, root: Path, expected: str, names: Sequence[str]) -> SuiteLayoutError:
    return SuiteLayoutError(f"{root}: --suite {suite} expects {expected}; found {_describe(names)}")


def _read_wnid_folders(suite: str, root: Path, split: str, known: frozenset[str],
                       masked: bool) -> SuiteImages:
    """A tree of wnid class folders (ImageNet-Sketch, -A, -R). A wnid folder the suite's list
    lacks is kept as its own class: it counts if the probe knows it, else it is listed."""
    by_folder = _folders(root)
    wnid_folders = sorted(f for f in by_folder if imagenet.is_wnid(f))
    if not wnid_folders:
        raise _layout_error(suite, root, "one folder per class named by its ImageNet wnid "
                            "(e.g. n01440764/)", list(by_folder))
    relpaths, labels = [], []
    for folder in wnid_folders:
        relpaths += by_folder[folder]
        labels += [frozenset({folder})] * len(by_folder[folder])
    groups = {f: frozenset({f}) for f in wnid_folders}
    return SuiteImages(
        suite, root, split, tuple(relpaths), tuple(labels), groups,
        outputs=frozenset(wnid_folders) if masked else None,
        unmapped=frozenset(f for f in wnid_folders if f not in known),
        unknown_folders={f: len(v) for f, v in by_folder.items() if not imagenet.is_wnid(f)})


def read_imagenet_sketch(root: Path) -> SuiteImages:
    return _read_wnid_folders("imagenet-sketch", root, "test", frozenset(imagenet.in1k_wnids()),
                              masked=False)


def read_imagenet_a(root: Path) -> SuiteImages:
    return _read_wnid_folders("imagenet-a", root, "test", imagenet.imagenet_a_wnids(), masked=True)


def read_imagenet_r(root: Path) -> SuiteImages:
    return _read_wnid_folders("imagenet-r", root, "test", imagenet.imagenet_r_wnids(), masked=True)


def read_imagenet_v2(root: Path) -> SuiteImages:
    """ImageNetV2: folders 0..999 are IN-1k class indices (NOT the string-sorted order an
    ImageFolder would give them: '10' comes before '2' there)."""
    by_folder = _folders(root)
    wnids = imagenet.in1k_wnids()
    index_folders = sorted((f for f in by_folder if f.isdigit() and int(f) < len(wnids)), key=int)
    if not index_folders:
        raise _layout_error("imagenet-v2", root, "one folder per class named by its IN-1k index "
                            "0..999 (ImageNetV2's layout, e.g. "
                            "imagenetv2-matched-frequency-format-val/0/)", list(by_folder))
    relpaths, labels = [], []
    for folder in index_folders:
        relpaths += by_folder[folder]
        labels += [frozenset({wnids[int(folder)]})] * len(by_folder[folder])
    used = {wnids[int(f)] for f in index_folders}
    return SuiteImages("imagenet-v2", root, "test", tuple(relpaths), tuple(labels),
                       {w: frozenset({w}) for w in used}, outputs=None,
                       unknown_folders={f: len(v) for f, v in by_folder.items()
                                        if f not in index_folders})


def read_objectnet(root: Path) -> SuiteImages:
    """ObjectNet: image folders named by ObjectNet class (`objectnet-1.0/images/<folder>/`; the
    root may be the release folder or its images/). Of its 313 classes, the 113 that ImageNet has
    count, each as a group of IN-1k classes; images of the others are excluded (and counted)."""
    if (root / "images").is_dir():
        root = root / "images"
    by_folder = _folders(root)
    folder_labels, label_wnids = imagenet.objectnet_folder_labels(), imagenet.objectnet_label_wnids()
    known = [f for f in by_folder if f in folder_labels]
    if not known:
        raise _layout_error("objectnet", root, "ObjectNet's layout, one folder per ObjectNet "
                            "class (e.g. images/alarm_clock/)", list(by_folder))
    relpaths, labels, groups, excluded = [], [], {}, {}
    for folder in sorted(known):
        label = folder_labels[folder]
        if label not in label_wnids:
            excluded[folder] = len(by_folder[folder])
            continue
        relpaths += by_folder[folder]
        labels += [frozenset({label})] * len(by_folder[folder])
        groups[label] = label_wnids[label]
    return SuiteImages("objectnet", root, "test", tuple(relpaths), tuple(labels), groups,
                       outputs=frozenset().union(*label_wnids.values()),
                       unknown_folders={f: len(v) for f, v in by_folder.items()
                                        if f not in folder_labels},
                       excluded_folders=excluded)


def _vizwiz_index(value, where: Path, wnids: tuple[str, ...]) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(wnids):
        raise DatasetError(f"{where}: {value!r} is not an IN-1k class index (an integer 0..999)")
    return wnids[value]


def read_vizwiz(root: Path) -> SuiteImages:
    """VizWiz-Classification as its download script lays it out: ROOT/annotations.json (the
    public file: `categories` [{"id": IN-1k index, "wordnet_id": wnid}], `images` [file names])
    and ROOT/images/<file>. The public file has no labels (they are withheld for the server); an
    optional ROOT/labels.json {file name: [IN-1k indices]} (or {file name: {"labels": [...]}}, the
    format of the dataset's first evaluation script) makes the suite score itself."""
    annotations_path, images_dir = root / VIZWIZ_ANNOTATIONS, root / VIZWIZ_IMAGES
    if not annotations_path.is_file() or not images_dir.is_dir():
        names = list(_folders(root)) if root.is_dir() else []
        raise SuiteLayoutError(
            f"{root}: --suite vizwiz expects VizWiz-Classification's layout, {VIZWIZ_ANNOTATIONS} "
            f"(with `categories` and `images`) beside an {VIZWIZ_IMAGES}/ folder; found "
            f"{'no ' + VIZWIZ_ANNOTATIONS if not annotations_path.is_file() else 'no images/'}"
            f"{' and ' + _describe(names) if names else ''}")
    try:
        annotations = json.loads(annotations_path.read_text())
        categories, images = annotations["categories"], annotations["images"]
        category_pairs = [(c["id"], c["wordnet_id"]) for c in categories]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{annotations_path}: not VizWiz-Classification's annotation file "
                           f"(expected {{'categories': [{{'id', 'wordnet_id'}}], 'images': "
                           f"[file names]}}): {type(exc).__name__}: {exc}") from None
    wnids = imagenet.in1k_wnids()
    for index, wnid in category_pairs:
        if _vizwiz_index(index, annotations_path, wnids) != wnid:
            raise DatasetError(f"{annotations_path}: category id {index} is {wnids[index]} in "
                               f"the standard IN-1k order, not {wnid}: the file uses another "
                               "class order")
    outputs = frozenset(w for _, w in category_pairs)
    missing = [name for name in images if not (images_dir / name).is_file()]
    if missing:
        raise DatasetError(f"{images_dir}: {len(missing)} of the {len(images)} images in "
                           f"{annotations_path.name} are missing, e.g. {missing[:3]}")
    labels = _read_vizwiz_labels(root / VIZWIZ_LABELS, images, wnids)
    used = set(outputs).union(*labels) if labels else set(outputs)
    return SuiteImages("vizwiz", root, "test",
                       tuple(f"{VIZWIZ_IMAGES}/{name}" for name in images), tuple(labels),
                       {w: frozenset({w}) for w in used}, outputs=outputs)


def _read_vizwiz_labels(path: Path, images: list[str], wnids: tuple[str, ...]
                        ) -> list[frozenset[str]]:
    if not path.is_file():
        return [frozenset()] * len(images)
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: expected {{image file name: [IN-1k indices]}}: {exc}") \
            from None
    labels = []
    for name in images:
        entry = raw.get(name, [])
        indices = entry.get("labels", []) if isinstance(entry, dict) else entry
        labels.append(frozenset(_vizwiz_index(i, path, wnids) for i in indices))
    return labels


def read_labelled_tree(root: Path) -> SuiteImages:
    """Any tree <root>/<class>/<image> (the corruption suite): its folders are the run's classes."""
    by_folder = _folders(root)
    folders = sorted(f for f in by_folder if f)
    if not folders:
        raise _layout_error("corruptions", root, "a labelled tree, one folder per class of the "
                            "run (e.g. data/fashion-mnist/test/<class>/)", list(by_folder))
    relpaths, labels = [], []
    for folder in folders:
        relpaths += by_folder[folder]
        labels += [frozenset({folder})] * len(by_folder[folder])
    return SuiteImages("corruptions", root, root.name,
                       tuple(relpaths), tuple(labels), {f: frozenset({f}) for f in folders},
                       outputs=None, unmapped=frozenset(folders),
                       unknown_folders={"": len(by_folder[""])} if "" in by_folder else {})


# ------------------------------------------------------------------------ restricting, scoring
def restrict(images: SuiteImages, probe_classes: Sequence[str], predict_all: bool = False
             ) -> Selection:
    """The part of a suite a probe over `probe_classes` can be scored on: the logit mask (the
    suite's outputs the probe has), the images with a target among them (with `predict_all`,
    every image, as a prediction file needs; those without a target are not scored), and what
    was left out."""
    probe_set = set(probe_classes)
    mask = probe_set if images.outputs is None else probe_set & images.outputs
    classes = tuple(c for c in probe_classes if c in mask)
    if not classes:
        raise MixDiffError(_no_overlap_message(images, probe_classes))
    kept_groups = {name: group & mask for name, group in images.groups.items()}
    rows, targets, seen = [], [], set()
    for i, labels in enumerate(images.labels):
        wanted = set().union(*(kept_groups[label] for label in labels))
        if wanted or predict_all:
            rows.append(i)
            targets.append([c in wanted for c in classes])
            seen.update(label for label in labels if kept_groups[label])
    dropped = [name for name, group in kept_groups.items() if not group]
    unknown = dict(images.unknown_folders)
    counts = Counter(label for labels in images.labels for label in labels)
    unknown.update({name: counts[name] for name in dropped if name in images.unmapped})
    probe_index = {c: i for i, c in enumerate(probe_classes)}
    return Selection(
        classes=classes, probe_index=np.array([probe_index[c] for c in classes], dtype=np.int64),
        images=np.array(rows, dtype=np.int64),
        targets=np.array(targets, dtype=bool).reshape(len(rows), len(classes)),
        suite_classes=tuple(sorted(seen)),
        outside_probe=tuple(sorted(n for n in dropped if n not in images.unmapped)),
        unknown_folders=dict(sorted(unknown.items())))


def _no_overlap_message(images: SuiteImages, probe_classes: Sequence[str]) -> str:
    shown = ", ".join(list(probe_classes)[:3])
    if SUITES[images.suite].imagenet and not any(imagenet.is_wnid(c) for c in probe_classes):
        return (f"the probe's classes ({shown}, ...) are not ImageNet wnids: --suite "
                f"{images.suite} needs a run whose class folders are ImageNet wnids (n01440764, "
                "...); for other classes use --suite corruptions with a tree of the run's classes")
    return (f"{images.root}: none of its classes is among the probe's {len(probe_classes)} "
            f"classes ({shown}, ...): nothing to score")


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


def predictions(logits: Tensor | np.ndarray, selection: Selection) -> list[str]:
    """The predicted class of each selected image, among the selection's classes."""
    return [selection.classes[j] for j in masked_logits(logits, selection).argmax(1).tolist()]


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


def border_crop(image: PIL.Image.Image, i: int) -> PIL.Image.Image:
    """ObjectNet's images carry a 1-pixel border, not part of the photo: cut it off."""
    width, height = image.size
    b = OBJECTNET_BORDER
    return image.crop((b, b, width - b, height - b)) if width > 2 * b and height > 2 * b else image


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
    imagenet: bool = True  # its classes are ImageNet wnids (the probe must have some)
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
    Suite("corruptions", "any labelled tree of the run's classes, corrupted on the fly after "
          "ImageNet-C (plus a sketch rendering)", read_labelled_tree, top5=False, imagenet=False,
          corruption_grid=True),
)}


# -------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EncodeOptions:
    batch_size: int = 256
    num_workers: int | None = None
    show_progress: bool = True


@dataclass(frozen=True)
class SuiteOutcome:
    result: dict | None  # the result file's content; None when nothing could be scored (VizWiz's
    #                      public annotations carry no labels)
    prediction_file: list | None  # VizWiz: what its evaluation server takes
    selection: Selection


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
                              suite.tag, options.batch_size, options.num_workers,
                              options.show_progress)
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
    return SuiteOutcome(result, prediction_file, selection)


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

    def top1(pre_transform=None, tag: str = "", label: str = "clean") -> float:
        # the split label only names the encoding in the progress bar; the cache key has the tag
        shown = replace(image_set, split=f"{image_set.split} {label}")
        features = encoder.encode(shown, pre_transform, tag, options.batch_size,
                                  options.num_workers, options.show_progress)
        return score(probe.logits(features).cpu(), selection, top5=False)["top1"]

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
    return SuiteOutcome(result, None, selection)


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
    return (write_result(encoder.run, "robustness", name, outcome.result), predictions_path,
            outcome)


def refuse_another_probes_result(path: Path, probe: LinearProbe) -> None:
    """A suite's result made with one probe is not replaced by another probe's (the report would
    show the new number as if it were the old one's)."""
    if not path.is_file():
        return
    previous = json.loads(path.read_text()).get("settings", {}).get("probe")
    if previous is not None and previous != probe.dataset:
        raise RunDirError(f"{path} holds this suite's result with the probe fitted on "
                          f"{previous!r}, and this probe was fitted on {probe.dataset!r}: move "
                          f"that file away to keep both, or score with --probe {previous}")


def _result(dataset: str, images: SuiteImages, selection: Selection, encoder: Encoder,
            probe: LinearProbe, scores: dict[str, float], protocol: str) -> dict:
    return {
        "command": "robustness", "protocol": protocol, "online": False, "dataset": dataset,
        "split": images.split, "classes": len(selection.suite_classes),
        "images": int(selection.scored.sum()), **scores, "metric": "top1",
        "value": scores["top1"], "weights": encoder.weights,
        "checkpoint": encoder.checkpoint_record(),
        "settings": {"suite": images.suite, "root": str(images.root), "probe": probe.dataset,
                     "probe_classes": len(probe.classes), **encoder.settings()},
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
