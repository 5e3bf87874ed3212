"""Frozen features of a run's backbone: rebuild it from the run folder (no Lightning), encode a set
of images with the run's evaluation transform, and cache the result in the run.

The cache key is a hash of everything the features depend on: the checkpoint's bytes (sha256), the
weights (student or teacher), every image path with its size and modification time, the evaluation
transform and a caller's tag for any extra pre-transform. A second call with the same inputs loads
the file and encodes nothing; any change re-encodes.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mixdiff.data.eval_transform import eval_view
from mixdiff.data.tree import ImageTree, fingerprint, images_sha256, load_rgb
from mixdiff.devices import resolve_device
from mixdiff.evaluate.external import ExternalEncoder
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.errors import DatasetError, MixDiffError, RunDirError, TorchFileError
from mixdiff.io import atomic_open, file_sha256
from mixdiff.lock import holder
from mixdiff.models import build_backbone
from mixdiff.runs import PIXELS, RunDir, listed, read_checkpoint, state_mismatches

# weights a checkpoint can hold -> the prefix of their backbone in the Lightning state dict
WEIGHT_PREFIXES = {"student": "backbone.", "teacher": "teacher_backbone."}
# bump when the cached file's layout or the encoding itself changes (2: the file records its key)
CACHE_FORMAT = 2
MAX_WORKERS = 8

PreTransform = Callable[[PIL.Image.Image, int], PIL.Image.Image]


@dataclass(frozen=True)
class ImageSet:
    """Images to encode, with their labels. Items are files (`paths`), or, for datasets that keep
    their images inside a few files (CIFAR's pickles), whatever `reader(i)` returns; then `paths`
    only names the items and `source_files` are the files the cache key fingerprints."""

    name: str  # the dataset name in results and cache keys, e.g. "fashion-mnist"
    split: str  # "test", "val", "train", ...
    paths: tuple[str, ...]
    labels: np.ndarray  # int64, one per item, index into `classes`; -1 = unlabelled
    classes: tuple[str, ...]  # class names in label order (wnids for ImageNet-like sets)
    reader: Callable[[int], PIL.Image.Image] | None = field(default=None, compare=False,
                                                             repr=False)
    source_files: tuple[str, ...] = ()
    root: str | None = None  # the folder the set was read from, for the record

    @classmethod
    def from_tree(cls, root: str | Path, name: str | None = None, split: str | None = None,
                  classes: Sequence[str] | None = None) -> "ImageSet":
        """An image tree `<root>/<class>/<image>`; `name` defaults to the folder above root
        (data/fashion-mnist/test -> "fashion-mnist"), `split` to root's own name ("test")."""
        root = Path(root).absolute()
        tree = ImageTree.scan(root, tuple(classes) if classes is not None else None)
        return cls(name or root.parent.name, split or root.name,
                   tuple(str(tree.path(i)) for i in range(len(tree))), tree.labels, tree.classes,
                   root=str(root))

    def __len__(self) -> int:
        return len(self.paths)

    def relative_names(self) -> tuple[str, ...]:
        """Each item's path relative to the set's root (its name where there is none)."""
        if self.root is None:
            return self.paths
        if self.reader is not None:  # `<folder>#<split>/<index>` (evaluate.transfer)
            return tuple(path.removeprefix(self.root) for path in self.paths)
        return tuple(Path(path).relative_to(self.root).as_posix() for path in self.paths)

    def read(self, i: int) -> PIL.Image.Image:
        return self.reader(i) if self.reader is not None else load_rgb(self.paths[i])

    def content_sha256(self) -> str:
        """The images' own fingerprint: names relative to the root, and bytes (results record it,
        so that two results pair only when they scored the same images)."""
        if self.reader is not None:
            return images_sha256(self.relative_names(), source_files=self.source_files)
        return images_sha256(self.relative_names(), self.paths)

    def tree_fingerprint(self) -> dict | None:
        """The cheap fingerprint of the tree the set was read from (`data.tree.fingerprint`:
        names and sizes, no pixel read), as a result records its training images; None for
        items read from container files."""
        if self.reader is not None or self.root is None:
            return None
        return fingerprint(self.root, self.relative_names())

    def fingerprint(self) -> str:
        """sha256 of the item names and the size and mtime of every file they are read from."""
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(path.encode() + b"\0")
        for path in self.paths if self.reader is None else self.source_files:
            try:
                stat = os.stat(path)
            except OSError as exc:
                raise DatasetError(f"cannot read {path}: {exc.strerror}") from None
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def labelled_sets(train: str | Path, val: str | Path, name: str | None = None
                  ) -> tuple[ImageSet, ImageSet]:
    """The train and val trees of a probe, labelled in one class order; their classes must match.
    Both carry one dataset name: `name`, else the folder above `val` (data/fashion-mnist/test)."""
    name = name or Path(val).absolute().parent.name
    train_set, val_set = ImageSet.from_tree(train, name), ImageSet.from_tree(val, name)
    for image_set, root in ((train_set, train), (val_set, val)):
        if not image_set.classes:
            raise DatasetError(f"{root}: images sit directly in the folder; expected class "
                               "folders <class>/<image>")
    if train_set.classes != val_set.classes:
        only_train = sorted(set(train_set.classes) - set(val_set.classes))
        only_val = sorted(set(val_set.classes) - set(train_set.classes))
        raise DatasetError(f"the class folders of {train} and {val} differ: only in the train "
                           f"tree: {only_train[:10]}, only in the val tree: {only_val[:10]}; "
                           "both trees need the same classes")
    return train_set, val_set


def evaluation_warnings(train: str | Path, val: str | Path, train_set: ImageSet,
                        ks: Sequence[int] = ()) -> list[str]:
    """What would make an evaluation's number mean something other than it seems to."""
    notes = []
    if Path(train).resolve() == Path(val).resolve():
        notes.append(f"--train and --val are the same tree ({val}): the score is measured on the "
                     "training images themselves, not on held-out ones")
    if len(train_set.classes) == 1:
        notes.append(f"{train} has one class ({train_set.classes[0]}): every prediction is "
                     "right, so the accuracy says nothing about the features")
    if ks and ks[0] > len(train_set):  # the headline k (the others are listed beside it)
        notes.append(f"--k {ks[0]} is more than the {len(train_set)} training images: it votes "
                     f"with all {len(train_set)} of them (the same as k={len(train_set)})")
    return notes


class _Decoded(Dataset):
    """Item i of an ImageSet as the run's evaluation tensor; decoded in the loader's workers.

    A broken image comes back as its error message (DataLoader would re-raise a worker's
    exception as a traceback, not the one line the user needs)."""

    def __init__(self, images: ImageSet, transform, pre_transform: PreTransform | None):
        self.images, self.transform, self.pre_transform = images, transform, pre_transform
        self.to_tensor = v2.PILToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        try:
            image = self.images.read(i)
        except MixDiffError as exc:
            return str(exc)
        if self.pre_transform is not None:
            image = self.pre_transform(image, i)
        return self.transform(self.to_tensor(image.convert("RGB")))


def _collate(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    errors = [item for item in items if isinstance(item, str)]
    return errors[0] if errors else torch.stack(items)


class Encoder:
    """A frozen backbone in eval mode with its evaluation transform, from one of three sources:
    a run of `mixdiff pretrain` (`from_run`), the raw pixels (`pixels`), or anyone's timm or
    torchvision network with its weights (`from_model`). Every evaluation, cache and report
    takes any of them; `run` is the folder their results and caches go to."""

    def __init__(self, run: RunDir, config: DictConfig | None, weights: str,
                 checkpoint: Path | None, checkpoint_sha256: str | None, epoch: int | None,
                 global_step: int | None, backbone: nn.Module, feature_dim: int,
                 device: torch.device, default_weights: str | None = None,
                 model: ExternalEncoder | None = None):
        self.run, self.config, self.weights, self.model = run, config, weights, model
        self.default_weights = default_weights or weights  # what --weights means when omitted
        self.checkpoint, self.checkpoint_sha256 = checkpoint, checkpoint_sha256
        self.epoch, self.global_step = epoch, global_step
        self.trained_by: str | None = None  # the process training the run when it was read
        self.backbone, self.feature_dim, self.device = backbone, feature_dim, device
        self.transform = model.transform if model is not None else eval_view(config)
        # a ResNet on a GPU runs fastest in channels_last with bf16 (tensor cores, no transposes)
        self.channels_last = device.type == "cuda" and self.backbone_name.split("/")[-1] \
            .startswith("resnet")
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    @classmethod
    def from_run(cls, run: RunDir | str | Path, weights: str | None = None,
                 device: str | None = None) -> "Encoder":
        """weights None -> "teacher" where the checkpoint has one (DINO), else "student"."""
        run = run if isinstance(run, RunDir) else RunDir(Path(run))
        config = run.load_config()
        checkpoint = run.require_checkpoint()
        # mmap: only the backbone's tensors are read, not the optimiser state beside them
        saved = read_checkpoint(checkpoint, mmap=True)
        state = saved["state_dict"]
        available = [w for w, prefix in WEIGHT_PREFIXES.items()
                     if any(k.startswith(prefix) for k in state)]
        default = "teacher" if "teacher" in available else "student"
        weights = weights or default
        if weights not in WEIGHT_PREFIXES:
            raise MixDiffError(f"--weights {weights!r}: choose one of {', '.join(WEIGHT_PREFIXES)}")
        if weights not in available:
            raise RunDirError(f"{checkpoint} has no {weights} weights (method={config.method}); "
                              f"use --weights {' or '.join(available) or 'student'}")
        prefix = WEIGHT_PREFIXES[weights]
        backbone, dim = build_backbone(config.model, config.data.image_size)
        mine = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        misfits = state_mismatches(mine, backbone.state_dict())
        if misfits:
            raise RunDirError(f"checkpoint {checkpoint}: its {weights} weights do not fit the "
                              f"run's model (model.backbone={config.model.backbone} in "
                              f"{run.config.name}): {listed(misfits)}. It is damaged, or "
                              "another run's: give the run its own (a damaged last.ckpt can be "
                              "removed: `mixdiff pretrain` with the run's --out then trains it "
                              "again from the start)")
        backbone.load_state_dict(mine)
        resolved = torch.device(resolve_device(device))
        backbone.eval().requires_grad_(False).to(resolved)
        encoder = cls(run, config, weights, checkpoint, file_sha256(checkpoint),
                      int(saved["epoch"]), int(saved["global_step"]), backbone, dim, resolved,
                      default)
        encoder.trained_by = holder(run.root)  # `mixdiff pretrain` holds it while it trains
        return encoder

    @classmethod
    def pixels(cls, run: RunDir | str | Path, device: str | None = None) -> "Encoder":
        """The raw-pixel floor: the run's evaluation tensors (resized, centre-cropped,
        normalised), flattened, are the features. No network and no checkpoint: the run lends
        only its evaluation transform, and holds the results (as `<dataset>-pixels.json`)."""
        run = run if isinstance(run, RunDir) else RunDir(Path(run))
        config = run.load_config()
        size = config.data.image_size
        return cls(run, config, PIXELS, None, None, None, None, nn.Flatten().eval(),
                   3 * size * size, torch.device(resolve_device(device)), "student")

    @classmethod
    def from_model(cls, model: str, out: str | Path | None, checkpoint: str | Path | None = None,
                   weights: str | None = None, device: str | None = None,
                   image_size: int | None = None) -> "Encoder":
        """A timm or torchvision network (`timm/resnet50`, `torchvision/resnet50`) with the
        weights of `checkpoint` (evaluate.external: solo-learn, lightly, DINO's official, a plain
        state dict), or the library's own from its hub; its own evaluation transform (at
        `image_size` if given). Results and caches go to `out`, laid out as a run's, and
        OUT/encoder.json says what the encoder is (`mixdiff report` shows it by its name)."""
        from mixdiff.evaluate.external import describe_encoder, load_external

        found = load_external(model, checkpoint, weights, image_size)
        run = None if out is None else RunDir(Path(out))  # None: nothing to keep (attention)
        if run is not None:
            describe_encoder(run, found)
        resolved = torch.device(resolve_device(device))
        found.network.module.eval().requires_grad_(False).to(resolved)
        return cls(run, None, found.weights, found.checkpoint, found.identity, None, None,
                   found.network.module, found.network.feature_dim, resolved, found.weights,
                   found)

    @property
    def backbone_name(self) -> str:
        if self.model is not None:
            return self.model.label
        return "none: the flattened evaluation tensor" if self.is_pixels else \
            self.config.model.backbone

    @property
    def is_pixels(self) -> bool:
        return self.weights == PIXELS

    def unfinished(self) -> dict | None:
        """Where the run was when its checkpoint was read, if it was still training: a result
        made from it is early, and `mixdiff report` marks it. None: the run was not training."""
        if self.trained_by is None:
            return None
        # Lightning's epoch counts from 0: the checkpoint is of the epoch it was in, or had ended
        return {"epoch": self.epoch + 1, "max_epochs": int(self.config.trainer.max_epochs),
                "trained_by": self.trained_by}

    def checkpoint_record(self) -> dict:
        unfinished = self.unfinished()
        return {"path": str(self.checkpoint) if self.checkpoint else None,
                "sha256": self.checkpoint_sha256,
                "epoch": self.epoch, "global_step": self.global_step,
                **({"unfinished": unfinished} if unfinished else {})}

    def settings(self) -> dict:
        """What the features depend on, for the `settings` of a result."""
        where = {"precision": "bf16 autocast" if self.device.type == "cuda" else "fp32",
                 "device": str(self.device)}
        if self.model is not None:
            return {"backbone": self.backbone_name, "feature_dim": self.feature_dim,
                    **self.model.record(), **where}
        return {"backbone": self.backbone_name, "feature_dim": self.feature_dim,
                "image_size": self.config.data.image_size,
                "eval_resize": self.config.data.eval_resize,
                "eval_transform": "resize short side to image_size * eval_resize, centre crop "
                                  "image_size, normalise with the run's mean/std", **where}

    def cache_key(self, images: ImageSet, tag: str = "") -> str:
        """The features' inputs, and where and how they are computed: a GPU encodes under bf16
        autocast, the CPU in fp32, so neither may return the other's features (a device's
        index, cuda:0 or cuda:1, changes nothing)."""
        parts = {"format": CACHE_FORMAT, "checkpoint": self.checkpoint_sha256,
                 "weights": self.weights, "transform": repr(self.transform), "tag": tag,
                 "items": images.fingerprint(), "device": self.device.type,
                 "precision": self.settings()["precision"]}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def encode(self, images: ImageSet, pre_transform: PreTransform | None = None, tag: str = "",
               options: EncodeOptions = EncodeOptions()) -> torch.Tensor:
        """(len(images), feature_dim) float32 CPU features, from the cache when it has them.
        `pre_transform(image, i)` changes each PIL image before the evaluation transform; `tag`
        names it in the cache key (e.g. "gaussian_noise/3")."""
        if not len(images):
            raise DatasetError(f"{images.name}/{images.split}: no images to encode")
        if pre_transform is not None and not tag:
            raise ValueError("a pre_transform needs a tag: it is part of the cache key")
        key = self.cache_key(images, tag)
        cache = self.run.feature_cache(key)
        if cache.is_file():
            return self._cached(cache, images, key)
        features = self._encode(images, pre_transform, options)
        if not torch.isfinite(features).all():  # never cached: it would be refused when read
            raise RunDirError(f"{self.backbone_name} ({self.weights}) gives features that are "
                              f"not finite numbers (NaN or inf) on {images.name}/{images.split}: "
                              f"its weights ({self.checkpoint or 'the network'}) are broken; "
                              "evaluate another checkpoint")
        # stored in the dtype the backbone produced (bf16 on a GPU): lossless, and a second call
        # returns exactly what the first did
        with atomic_open(cache, "wb") as handle:
            torch.save({"features": features, "dataset": images.name, "split": images.split,
                        "weights": self.weights, "checkpoint": self.checkpoint_sha256,
                        "tag": tag, "key": key}, handle)
        return features.float()

    def _cached(self, cache: Path, images: ImageSet, key: str) -> torch.Tensor:
        """The features a cache file holds, after checking that they are what is asked: the key
        it records (of everything the features depend on: `cache_key`), and features of the
        right shape that are all finite. A damaged or swapped file is one line naming it, never
        a wrong number. (Its dataset and split are labels: one set of images may be encoded
        under several, and shares one file.)"""
        from mixdiff.torch_files import load_torch_file

        fix = "delete it: the features are computed again"
        saved = load_torch_file(cache, "feature cache", fix[0].upper() + fix[1:])
        features = saved.get("features") if isinstance(saved, dict) else None
        if not isinstance(features, torch.Tensor):
            problem = "holds no `features` tensor: not a feature cache of mixdiff"
        elif saved.get("key") != key:
            problem = (f"holds the features of {saved.get('dataset')}/{saved.get('split')} (key "
                       f"{str(saved.get('key'))[:12]}), not of {images.name}/{images.split} "
                       f"(key {key[:12]})")
        elif features.shape != (len(images), self.feature_dim):
            problem = (f"holds features of shape {tuple(features.shape)} where "
                       f"({len(images)}, {self.feature_dim}) are asked")
        elif not torch.isfinite(features).all():
            problem = "holds features that are not finite numbers (NaN or inf)"
        else:
            return features.float()
        raise TorchFileError(f"feature cache {cache} {problem}: it is damaged, or another "
                             f"file's; {fix}")

    @torch.inference_mode()
    def _encode(self, images: ImageSet, pre_transform: PreTransform | None,
                options: EncodeOptions) -> torch.Tensor:
        workers = min(MAX_WORKERS, os.cpu_count() or 1) if options.num_workers is None \
            else options.num_workers
        on_gpu = self.device.type == "cuda"
        loader = DataLoader(_Decoded(images, self.transform, pre_transform),
                            batch_size=options.batch_size,
                            num_workers=workers, collate_fn=_collate, pin_memory=on_gpu,
                            persistent_workers=False)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else nullcontext()
        console = Console(stderr=True)
        features, start = None, 0
        with Progress(console=console, transient=True,
                      disable=not (options.show_progress and console.is_terminal)) as progress:
            task = progress.add_task(f"encoding {images.name}/{images.split} "
                                     f"({self.weights})", total=len(images))
            for batch in loader:
                if isinstance(batch, str):
                    raise DatasetError(batch)
                batch = batch.to(self.device, non_blocking=True)
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with autocast:
                    out = self.backbone(batch).flatten(1)
                if features is None:
                    features = torch.empty(len(images), out.shape[1], dtype=out.dtype)
                features[start:start + len(out)] = out.cpu()
                start += len(out)
                progress.advance(task, len(out))
        return features
