"""The robustness suites' test sets, each read in its own on-disk layout, and restricted to the
classes a run's linear probe knows.

A suite reader turns a folder into `SuiteImages`: every image with its labels in the suite's own
classes (a wnid, an ObjectNet label, a VizWiz label set), and for each suite class the run classes
that count as it (`groups`: ObjectNet's 'Chair' -> three IN-1k chairs). `restrict` then keeps what
the probe can answer: a probe fitted on ImageNet-100 is scored on the 15 classes it shares with
ImageNet-A, and the result says so (`Selection`). Scoring is `evaluate.robustness`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import PIL.Image

from mixdiff.data.tree import list_images
from mixdiff.errors import DatasetError, MixDiffError
from mixdiff.evaluate import imagenet

if TYPE_CHECKING:  # torch loads only when a suite runs: the CLI's help lists the registry fast

    pass

CLASS_TREE_SUITE = "corruptions"  # the one suite of the run's own classes; the others: wnids
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
    return SuiteImages(CLASS_TREE_SUITE, root, root.name,
                       tuple(relpaths), tuple(labels), {f: frozenset({f}) for f in folders},
                       outputs=None, unmapped=frozenset(folders),
                       unknown_folders={"": len(by_folder[""])} if "" in by_folder else {})


# ------------------------------------------------------------------------ restricting
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
    if images.suite != CLASS_TREE_SUITE and not any(imagenet.is_wnid(c) for c in probe_classes):
        return (f"the probe's classes ({shown}, ...) are not ImageNet wnids: --suite "
                f"{images.suite} needs a run whose class folders are ImageNet wnids (n01440764, "
                "...); for other classes use --suite corruptions with a tree of the run's classes")
    return (f"{images.root}: none of its classes is among the probe's {len(probe_classes)} "
            f"classes ({shown}, ...): nothing to score")


def border_crop(image: PIL.Image.Image, i: int) -> PIL.Image.Image:
    """ObjectNet's images carry a 1-pixel border, not part of the photo: cut it off."""
    width, height = image.size
    b = OBJECTNET_BORDER
    return image.crop((b, b, width - b, height - b)) if width > 2 * b and height > 2 * b else image
