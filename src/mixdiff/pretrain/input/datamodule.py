"""The Lightning data module: which images train, which evaluate, their loaders, and (with
`augment.backend=batched`) the half of each training view made on the training device."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import move_data_to_device
from omegaconf import DictConfig
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mixdiff.pretrain.input import device_decode
from mixdiff.pretrain.input.batch_augment import BatchAugment, GroupPlan, step_seed
from mixdiff.pretrain.input.input_stream import beside_the_step
from mixdiff.pretrain.input.paired import LabelledImages, PairedDataset, build_samples
from mixdiff.data.eval_transform import eval_view
from mixdiff.data.splits import stratified_holdout, stratified_subset
from mixdiff.data.tree import ImageTree, find_unreadable, fingerprint
from mixdiff.data.twin_scores import TwinFilter
from mixdiff.pretrain.input.views import build_views, extra_compute, twin_positions
from mixdiff.errors import DatasetError, UnreadableImageError
from mixdiff.io import atomic_write_text
from mixdiff.runs import FINGERPRINTS

log = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """A seeded shuffle per epoch (each rank its share, as DistributedSampler), that can start an
    epoch part-way: a run resumed from a mid-epoch checkpoint sees the rest of that epoch's
    permutation, not a new one. Lightning keeps a DistributedSampler it is given.

    `epoch_size` draws only that many samples an epoch (the start of each epoch's permutation:
    other samples each epoch), e.g. a pooled epoch as long as a real one.

    It yields `(index, draw seed)`: the seed of the sample's random draws (twin, crop, colours) is
    fixed by (seed, epoch, position in the epoch), so neither the worker that loads a sample nor
    what that worker drew before (a resumed run's workers start afresh) changes them."""

    def __init__(self, dataset: Dataset, seed: int, epoch_size: int | None = None):
        ranks = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and \
            dist.is_initialized() else (1, 0)
        super().__init__(dataset, num_replicas=ranks[0], rank=ranks[1], shuffle=True, seed=seed)
        self.epoch_size = min(epoch_size or len(dataset), len(dataset))
        self.num_samples = math.ceil(self.epoch_size / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self._skip = 0

    def resume(self, epoch: int, samples_done: int) -> None:
        """Start the next iteration at `epoch`, after its first `samples_done` samples."""
        self.set_epoch(epoch)
        self._skip = samples_done

    def epoch_order(self) -> list[int]:
        """This rank's samples of the current epoch, as DistributedSampler draws them (padded by
        repetition to a multiple of the ranks), from the first `epoch_size` of the permutation."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = torch.randperm(len(self.dataset), generator=generator).tolist()
        indices = indices[:self.epoch_size]
        padding = self.total_size - len(indices)
        indices += (indices * math.ceil(padding / len(indices)))[:padding]
        return indices[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first = epoch_draw_seed(self.seed, self.epoch)
        positions = range(self.rank, self.total_size, self.num_replicas)  # in the whole epoch
        keys = [(index, first + position)
                for index, position in zip(self.epoch_order(), positions)][self._skip:]
        self._skip = 0  # once: later epochs start at their beginning
        return iter(keys)


def epoch_draw_seed(seed: int, epoch: int) -> int:
    """The first of an epoch's per-sample draw seeds (the others follow it, one per position):
    well mixed, so that the seeds of neighbouring epochs do not overlap in practice."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint32)[0]) << 24


def data_warnings(data: DictConfig) -> list[str]:
    """Data settings that run, but not as they seem to: synthetic roots a mode ignores, or the
    real tree given as its own synthetic root."""
    notes = []
    if data.mode == "real" and data.synthetic:
        notes.append(f"data.synthetic ({len(data.synthetic)} root(s)) is ignored in "
                     "data.mode=real: the run trains on the real images only")
    real = Path(data.real).resolve()
    for root in data.synthetic:
        if Path(root).resolve() == real:
            notes.append(f"data.synthetic root {root} is data.real itself: each 'synthetic twin' "
                         "is its real image, so this run measures no effect of synthetic data")
    return notes




class MixDiffDataModule(L.LightningDataModule):
    """Training samples for `data.mode`, plus two labelled loaders for the online evaluation:
    the validation images and the kNN bank (real training images, plain views)."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.summary: dict = {}
        self._prepared = False
        self._resume: dict | None = None  # where a resumed run's epoch starts (load_state_dict)
        self.batch_augment: BatchAugment | None = None  # augment.backend=batched
        self._augment_plan: list[GroupPlan] | None = None  # drawn before the batch moves
        # the training batch's device half on a CUDA stream beside the step (input_stream.py);
        # False (benchmarks, tests) queues it on the step's own stream, as Lightning would
        self.input_stream = True

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
        # what each tree held when the run started: a resume must find the same (see the key)
        fingerprints = {"data.real": fingerprint(data.real, tree.relpaths)}
        positions = np.arange(len(tree))
        val_paths, val_labels, val_source = [], [], "none (unlabelled data, no data.val)"
        for note in data_warnings(data):
            log.warning("warning: %s", note)
        if data.val:
            val_tree = ImageTree.scan(data.val, classes=tree.classes or None)
            if not val_tree.labelled:  # found now, not by the online evaluation after an epoch
                raise DatasetError(f"config key `data.val` = {data.val}: its images sit directly "
                                   "in the folder; the online evaluation needs class folders "
                                   "<class>/<image>. Give a labelled tree, or leave data.val "
                                   "empty to hold out part of a labelled data.real")
            if not tree.classes:
                self.classes = val_tree.classes
            val_paths = [str(val_tree.path(i)) for i in range(len(val_tree))]
            val_labels = val_tree.labels.tolist()
            fingerprints["data.val"] = fingerprint(data.val, val_tree.relpaths)
            val_source = f"data.val = {data.val}"
        elif tree.labelled:
            positions, held = stratified_holdout(tree.labels, data.val_fraction, seed)
            val_paths = [str(tree.path(i)) for i in held]
            val_labels = tree.labels[held].tolist()
            val_source = (f"stratified hold-out of {data.val_fraction:.0%} of data.real "
                          f"(seed {seed}), excluded from training")
        positions = positions[stratified_subset(tree.labels[positions], data.real_fraction,
                                                seed + 1)]
        twin_filter = TwinFilter.read(data.synthetic_scores, data.synthetic_min_similarity,
                                      data.synthetic_require_class_kept) \
            if data.synthetic_scores else None
        samples = build_samples(tree, positions, data.mode, list(data.synthetic),
                                data.missing_synthetic, twin_filter)
        if data.mode != "real":
            fingerprints.update({f"data.synthetic[{i}]": fingerprint(root)
                                 for i, root in enumerate(data.synthetic)})
        augment = self.cfg.augment
        views = build_views(self.cfg)
        self.train_set = PairedDataset(samples, views, data.mode, data.p_synthetic,
                                       augment.synthetic_augment, augment.backend,
                                       data.decode)
        if augment.backend == "batched":
            self.batch_augment = BatchAugment(views, augment.synthetic_augment)
        twins = twin_positions(views)
        if twins:
            log.info("data.mode=extra: %d twin view(s) beside the recipe's %d: %.2fx the pixels "
                     "the encoder sees per step", len(twins), len(views) - len(twins),
                     extra_compute(views))
        bank = positions[tree.labels[positions] >= 0]
        limit = self.cfg.online_eval.knn_max_train_images
        if limit is not None and limit < len(bank):
            bank = bank[stratified_subset(tree.labels[bank], limit / len(bank), seed + 2)]
        val_limit = self.cfg.online_eval.max_val_images
        if val_limit is not None and val_limit < len(val_paths):
            kept = stratified_subset(np.asarray(val_labels), val_limit / len(val_paths), seed + 3)
            val_paths = [val_paths[i] for i in kept]
            val_labels = [val_labels[i] for i in kept]
            val_source += f", a stratified subset of {len(val_paths)} (seed {seed + 3})"
        transform = eval_view(self.cfg)
        self.val_set = LabelledImages(val_paths, val_labels, transform)
        self.bank_set = LabelledImages([str(tree.path(i)) for i in bank],
                                       tree.labels[bank].tolist(), transform)
        # a pooled epoch as long as a real one (data.pooled_epoch=real): every mode runs the same
        # optimiser steps; `all`: every real and synthetic image once, twice the steps
        self.epoch_samples = len(positions) if data.mode == "pooled" and \
            data.pooled_epoch == "real" else len(samples)
        self.summary = {
            "mode": data.mode, "real_images_total": len(tree), "real_images_train": len(positions),
            "train_samples": len(samples), "epoch_samples": self.epoch_samples,
            "real_fraction": data.real_fraction,
            "classes_count": len(self.classes),
            "synthetic_roots": list(data.synthetic), "classes": list(self.classes),
            "views_per_sample": len(views), "twin_views": len(twins),
            "synthetic_twins_dropped": twin_filter.dropped if twin_filter else 0,
            "synthetic_filter": twin_filter.describe() if twin_filter else None,
            "val_images": len(val_paths), "val_source": val_source,
            "knn_bank_images": len(bank),
            "online_eval": "linear probe on detached backbone features (trained on training views) "
                           "and weighted kNN (bank: real training images, plain views), both "
                           "scored on the val images" if val_paths else "disabled",
            FINGERPRINTS: fingerprints,
        }
        if len(self.classes) == 1:
            log.warning("%s has a single class (%s): the online kNN and probe accuracies are "
                        "100%% by construction and say nothing about the representation",
                        data.real, self.classes[0])
        self._prepared = True

    def image_paths(self) -> list[str]:
        """Every image file the run will read: training images and twins, val, kNN bank."""
        paths = {p for s in self.train_set.samples for p in (s.real, *(t for _, t in s.twins))
                 if p is not None}
        return sorted(paths | set(self.val_set.paths) | set(self.bank_set.paths))

    def check_images(self, mode: str, show_progress: bool) -> None:
        """Open (`header`) or decode (`decode`) every image before training starts, and report
        every unreadable file in one error, rather than failing at the first, epochs in."""
        if mode == "none":
            return
        paths = self.image_paths()
        start = time.perf_counter()
        with Progress(transient=True, disable=not show_progress) as progress:
            task = progress.add_task(f"checking {len(paths)} images ({mode})", total=len(paths))
            bad = find_unreadable(paths, decode=mode == "decode",
                                  on_checked=lambda: progress.advance(task))
        log.info("checked %d images (%s) in %.1f s", len(paths), mode,
                 time.perf_counter() - start)
        if bad:
            raise UnreadableImageError.many(bad)

    def write_summary(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.summary, indent=2) + "\n")

    def _loader(self, dataset, drop_last: bool, sampler=None, collate_fn=None) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_size=self.cfg.trainer.batch_size, sampler=sampler,
                          drop_last=drop_last, num_workers=workers, collate_fn=collate_fn,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                          prefetch_factor=4 if workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        if self.epoch_samples < self.cfg.trainer.batch_size:
            log.warning("only %d training samples for batch_size %d", self.epoch_samples,
                        self.cfg.trainer.batch_size)
        sampler = ResumableSampler(self.train_set, self.cfg.trainer.seed, self.epoch_samples)
        if self._resume is not None:  # every loader made for this fit (Lightning makes two)
            sampler.resume(**self._resume)
        collate = device_decode.collate if self.cfg.data.decode == "device" else None
        return self._loader(self.train_set, sampler=sampler, collate_fn=collate,
                            drop_last=self.epoch_samples >= self.cfg.trainer.batch_size)

    def val_dataloader(self) -> list[DataLoader]:
        if not len(self.val_set):
            return []
        return [self._loader(self.val_set, False), self._loader(self.bank_set, False)]

    # --- augment.backend=batched: drawn on the CPU batch, made on the device beside the step ---
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Draw the training batch's photometric parameters, seeded by (trainer.seed, rank,
        global step): a resumed run draws what the uninterrupted one would have."""
        trainer = self.trainer
        if self.batch_augment is not None and (trainer is None or trainer.training):
            rank, step = (trainer.global_rank, trainer.global_step) if trainer else (0, 0)
            generator = torch.Generator().manual_seed(step_seed(self.cfg.trainer.seed, rank, step))
            self._augment_plan = self.batch_augment.plan(batch[2], generator)
        return batch

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """The training batch's device half, on a stream beside the step (`input_stream`):
        the copy, the decode and crops (data.decode=device) and the photometric ops, which give
        augmented, normalised float views. More than a transfer, so that all of it overlaps the
        previous step."""
        plans, self._augment_plan = self._augment_plan, None
        if plans is None:
            return super().transfer_batch_to_device(batch, device, dataloader_idx)

        def device_half():
            index, views, sources, labels = batch
            if isinstance(views, device_decode.EncodedBatch):
                views = device_decode.decode_batch(
                    views, [view.size for view in self.train_set.views], device)
            index, views, sources, labels = move_data_to_device(
                (index, views, sources, labels), device)
            return index, self.batch_augment.apply(views, plans), sources, labels

        if not self.input_stream:
            return device_half()
        return beside_the_step(device, device_half)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Float views in the model's input dtype (e.g. bf16-true)."""
        if self.trainer is not None and self.trainer.training and \
                self.batch_augment is not None:
            index, views, sources, labels = batch
            views = self.trainer.precision_plugin.convert_input(views)
            batch = index, views, sources, labels
        return batch

    def prepare_batch(self, batch, device: torch.device):
        """A loader batch as the training step receives it: Lightning's three transfer hooks, in
        Lightning's order (for benchmarks and tests, which run them without a Trainer)."""
        batch = self.on_before_batch_transfer(batch, 0)
        return self.on_after_batch_transfer(self.transfer_batch_to_device(batch, device, 0), 0)

    # --- where a resumed run starts (saved in every checkpoint) -------------------------------
    def state_dict(self) -> dict:
        """The position in the training data: the epoch and how many of its batches are done."""
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        finished = done >= trainer.num_training_batches
        return {"epoch": trainer.current_epoch + finished,
                "batches_done": 0 if finished else done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = {"epoch": state["epoch"],
                        "samples_done": state["batches_done"] * self.cfg.trainer.batch_size}
