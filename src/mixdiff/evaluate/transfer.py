"""Linear transfer to the paper's eight datasets through `torchvision.datasets`, by SynCLR's
protocol (google-research/syn-rep-learn, SynCLR/eval/main_downstream_linear.py; see
shared/data/classes/transfer_datasets.md):

* train / val: the official splits for Aircraft, DTD and Flowers; for the others a random 20 % of
  the training split (Pets: of `trainval`) is the val split, shuffled by NumPy's seed 0 exactly as
  SynCLR does;
* features of the run's frozen backbone, standardised (train/val with the train statistics,
  train+val/test with the train+val statistics);
* multinomial logistic regression by L-BFGS, the weight decay swept on val with the dataset's
  metric, refit on train+val, scored once on test;
* metric: mean per-class accuracy for Flowers, Pets and Aircraft, top-1 for the others.

One difference, recorded in each result's settings: images go through the run's own evaluation
transform (its image size and normalisation), not SynCLR's 224 px bicubic resize with CLIP
constants, so that a backbone is probed at the resolution it was trained for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset
from torchvision import datasets

from mixdiff.errors import DatasetError
from mixdiff.evaluate.features import Encoder, ImageSet
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.predictions import CLEAN, Predictions
from mixdiff.evaluate.logistic import LogisticSettings, select_and_fit
from mixdiff.evaluate.results import METRICS, accuracies, result_name, write_result

VAL_FRACTION, VAL_SEED = 0.2, 0  # SynCLR's valid_size and random_seed


@dataclass(frozen=True)
class TransferDataset:
    title: str
    loader: type[Dataset]  # the torchvision dataset class
    folder: str  # where torchvision keeps it under --root
    splits: dict[str, dict]  # "train", "val" (only where official) and "test" -> constructor kwargs
    metric: str  # a key of results.METRICS
    fixed: dict = field(default_factory=dict)  # constructor kwargs common to every split

    @property
    def train_split(self) -> str:
        return self.splits["train"].get("split", "train")

    @property
    def official_val(self) -> bool:
        return "val" in self.splits

    def describe(self) -> str:
        val = "official val split" if self.official_val else \
            f"random {VAL_FRACTION:.0%} of {self.train_split} as val"
        return f"{self.title} ({val}; {self.metric})"


_OFFICIAL = {split: {"split": split} for split in ("train", "val", "test")}
_TRAIN_TEST = {"train": {"split": "train"}, "test": {"split": "test"}}
_CIFAR = {"train": {"train": True}, "test": {"train": False}}

# name (`--dataset`) -> how to read it; the single source of the names, their help and metrics
TRANSFER_DATASETS: dict[str, TransferDataset] = {
    "cifar10": TransferDataset("CIFAR-10", datasets.CIFAR10, "cifar-10-batches-py", _CIFAR,
                               "top1"),
    "cifar100": TransferDataset("CIFAR-100", datasets.CIFAR100, "cifar-100-python", _CIFAR,
                                "top1"),
    "food101": TransferDataset("Food-101", datasets.Food101, "food-101", _TRAIN_TEST, "top1"),
    "flowers102": TransferDataset("Flowers-102", datasets.Flowers102, "flowers-102", _OFFICIAL,
                                  "mean_per_class_accuracy"),
    "pets": TransferDataset("Oxford-IIIT Pets", datasets.OxfordIIITPet, "oxford-iiit-pet",
                            {"train": {"split": "trainval"}, "test": {"split": "test"}},
                            "mean_per_class_accuracy", {"target_types": "category"}),
    "aircraft": TransferDataset("FGVC-Aircraft", datasets.FGVCAircraft, "fgvc-aircraft-2013b",
                                _OFFICIAL, "mean_per_class_accuracy",
                                {"annotation_level": "variant"}),
    "dtd": TransferDataset("DTD", datasets.DTD, "dtd/dtd", _OFFICIAL, "top1", {"partition": 1}),
    "stl10": TransferDataset("STL-10", datasets.STL10, "stl10_binary", _TRAIN_TEST, "top1"),
}


class _TorchvisionImage:
    """Image i of a torchvision dataset (built without transforms: a PIL image); picklable, for
    the loader's workers."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __call__(self, i: int) -> PIL.Image.Image:
        return self.dataset[i][0]


def _labels_of(dataset: Dataset) -> np.ndarray:
    """torchvision keeps the labels in `targets` (CIFAR), `labels` (STL-10) or `_labels` (the
    datasets of image files); reading them there spares decoding every image."""
    for attribute in ("targets", "labels", "_labels"):
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            return np.asarray(labels, dtype=np.int64)
    return np.array([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)


def load_split(name: str, root: str | Path, split: str, download: bool = False,
               sources: tuple[str, ...] | None = None) -> ImageSet:
    """One split of a transfer dataset as an ImageSet that Encoder.encode reads through
    torchvision (items are named `<folder>#<split>/<index>`; the cache fingerprints the files of
    the dataset's folder: `sources`, when the caller has already listed them)."""
    spec = TRANSFER_DATASETS[name]
    root = Path(root).absolute()
    folder = root / spec.folder
    if not download and not folder.is_dir():
        raise DatasetError(f"{name}: torchvision expects {spec.title} in {folder}, which does not "
                           f"exist; pass --download to fetch it there, or point --root at the "
                           f"folder that holds {spec.folder}")
    try:
        dataset = spec.loader(str(root), **spec.fixed, **spec.splits[split], download=download)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{name}: torchvision could not read {folder} ({exc}); pass "
                           "--download to fetch it again") from None
    if sources is None:
        sources = _files_under(folder)
    return ImageSet(name, split, tuple(f"{folder}#{split}/{i}" for i in range(len(dataset))),
                    _labels_of(dataset), tuple(dataset.classes),
                    reader=_TorchvisionImage(dataset), source_files=sources, root=str(folder))


def _files_under(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(str(p) for p in folder.rglob("*") if p.is_file()))


def synclr_val_split(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of SynCLR's random split: np.random.seed(0), shuffle, first 20 %."""
    indices = np.arange(count)
    np.random.RandomState(VAL_SEED).shuffle(indices)
    split = math.floor(VAL_FRACTION * count)
    return indices[split:], indices[:split]


def transfer_eval(encoder: Encoder, name: str, root: str | Path, download: bool = False,
                  settings: LogisticSettings = LogisticSettings(), result: str | None = None,
                  options: EncodeOptions = EncodeOptions()) -> Path:
    """Fit on train, sweep on val, refit on train+val, score on test; returns the result file."""
    spec = TRANSFER_DATASETS[name]
    first, *others = spec.splits  # the first split downloads the dataset if asked to
    sets = {first: load_split(name, root, first, download)}
    sources = sets[first].source_files  # every split reads the same folder: list it once
    sets.update({split: load_split(name, root, split, download, sources) for split in others})
    classes = sets["train"].classes
    for split, images in sets.items():
        if images.classes != classes:
            raise DatasetError(f"{name}: the {split} split has other classes than the train "
                               f"split ({len(images.classes)} vs {len(classes)})")

    def encode(images: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        return encoder.encode(images, options=options), torch.from_numpy(images.labels)

    x_test, y_test = encode(sets["test"])
    if spec.official_val:
        (x_train, y_train), (x_val, y_val) = encode(sets["train"]), encode(sets["val"])
        x_all, y_all = torch.cat([x_train, x_val]), torch.cat([y_train, y_val])
    else:
        x_all, y_all = encode(sets["train"])
        train_idx, val_idx = synclr_val_split(len(y_all))
        x_train, y_train, x_val, y_val = x_all[train_idx], y_all[train_idx], x_all[val_idx], \
            y_all[val_idx]
    fitted = select_and_fit(x_train, y_train, x_val, y_val, x_all, y_all, len(classes),
                            spec.metric, settings, encoder.device)
    logits = fitted.classifier.logits(x_test)
    scores = accuracies(logits, y_test)
    test = sets["test"]
    predictions = Predictions.single(test.relative_names(), classes, test.labels,
                                     {CLEAN: logits.argmax(1).cpu().numpy()})
    value = METRICS[spec.metric](logits, y_test)
    val_source = "the official val split" if spec.official_val else \
        f"a random {VAL_FRACTION:.0%} of the {spec.train_split} split (NumPy seed {VAL_SEED})"
    record = {
        "command": "transfer",
        "protocol": f"offline linear transfer (SynCLR's protocol): multinomial logistic "
                    f"regression (L-BFGS) on frozen standardised features, weight decay swept on "
                    f"{val_source} by {spec.metric}, refit on train+val, scored once on test",
        "online": False, "dataset": name, "split": "test",
        "classes": int(y_test.unique().numel()), "images": len(y_test),
        "images_sha256": test.content_sha256(), **scores,
        "metric": spec.metric, "value": value, "weights": encoder.weights,
        "checkpoint": encoder.checkpoint_record(),
        "settings": {"root": str(Path(root).absolute()), "torchvision": spec.loader.__name__,
                     "constructor": {split: {**spec.fixed, **kwargs}
                                     for split, kwargs in spec.splits.items()},
                     "preprocessing": "the run's evaluation transform (resize the short side to "
                                      "image_size * eval_resize, centre crop image_size, the "
                                      "run's mean/std), not SynCLR's 224 px bicubic with CLIP "
                                      "constants",
                     **encoder.settings(), "logistic": settings.record()},
        "details": {"splits": {"train": len(y_train), "val": len(y_val),
                               "trainval": len(y_all), "test": len(y_test)},
                    "val_source": val_source, "dataset_classes": len(classes),
                    **fitted.record()},
    }
    return write_result(encoder.run, "transfer", result_name(name, encoder.weights,
                                                             encoder.default_weights, result),
                        record, predictions)
