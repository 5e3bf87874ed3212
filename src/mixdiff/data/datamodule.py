"""The Lightning data module: which images train, which evaluate, and their loaders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from mixdiff.data.paired import LabelledImages, PairedDataset, build_samples
from mixdiff.data.splits import stratified_holdout, stratified_subset
from mixdiff.data.tree import ImageTree
from mixdiff.data.views import build_views, eval_view
from mixdiff.io import atomic_write_text

log = logging.getLogger(__name__)


class MixDiffDataModule(L.LightningDataModule):
    """Training samples for `data.mode`, plus two labelled loaders for the online evaluation:
    the validation images and the kNN bank (real training images, plain views)."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.summary: dict = {}
        self._prepared = False

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        data, seed = self.cfg.data, self.cfg.trainer.seed
        tree = ImageTree.scan(data.real)
        self.classes = tree.classes
        positions = np.arange(len(tree))
        val_paths, val_labels, val_source = [], [], "none (unlabelled data, no data.val)"
        if data.val:
            val_tree = ImageTree.scan(data.val, classes=tree.classes or None)
            if not tree.classes:
                self.classes = val_tree.classes
            val_paths = [str(val_tree.path(i)) for i in range(len(val_tree))]
            val_labels = val_tree.labels.tolist()
            val_source = f"data.val = {data.val}"
        elif tree.labelled:
            positions, held = stratified_holdout(tree.labels, data.val_fraction, seed)
            val_paths = [str(tree.path(i)) for i in held]
            val_labels = tree.labels[held].tolist()
            val_source = (f"stratified hold-out of {data.val_fraction:.0%} of data.real "
                          f"(seed {seed}), excluded from training")
        positions = positions[stratified_subset(tree.labels[positions], data.real_fraction,
                                                seed + 1)]
        samples = build_samples(tree, positions, data.mode, list(data.synthetic),
                                data.missing_synthetic)
        self.train_set = PairedDataset(samples, build_views(self.cfg), data.mode, data.p_synthetic,
                                       self.cfg.augment.synthetic_augment)
        bank = positions[tree.labels[positions] >= 0]
        limit = self.cfg.online_eval.knn_max_train_images
        if limit is not None and limit < len(bank):
            bank = bank[stratified_subset(tree.labels[bank], limit / len(bank), seed + 2)]
        transform = eval_view(self.cfg)
        self.val_set = LabelledImages(val_paths, val_labels, transform)
        self.bank_set = LabelledImages([str(tree.path(i)) for i in bank],
                                       tree.labels[bank].tolist(), transform)
        self.summary = {
            "mode": data.mode, "real_images_total": len(tree), "real_images_train": len(positions),
            "train_samples": len(samples), "real_fraction": data.real_fraction,
            "synthetic_roots": list(data.synthetic), "classes": list(self.classes),
            "val_images": len(val_paths), "val_source": val_source,
            "knn_bank_images": len(bank),
            "online_eval": "linear probe on detached backbone features (trained on training views) "
                           "and weighted kNN (bank: real training images, plain views), both "
                           "scored on the val images" if val_paths else "disabled",
        }
        self._prepared = True

    def write_summary(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.summary, indent=2) + "\n")

    def _loader(self, dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_size=self.cfg.trainer.batch_size, shuffle=shuffle,
                          drop_last=drop_last, num_workers=workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=workers > 0,
                          prefetch_factor=4 if workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.cfg.trainer.batch_size:
            log.warning("only %d training samples for batch_size %d", len(self.train_set),
                        self.cfg.trainer.batch_size)
        return self._loader(self.train_set, shuffle=True,
                            drop_last=len(self.train_set) >= self.cfg.trainer.batch_size)

    def val_dataloader(self) -> list[DataLoader]:
        if not len(self.val_set):
            return []
        return [self._loader(self.val_set, False, False), self._loader(self.bank_set, False, False)]
