"""Training samples `(index, views, sources, label)` for every data mode.

`sources[v]` says what view v was cut from: 0 for a real image, k + 1 for synthetic variant k
(the k-th entry of `data.synthetic`). A synthetic view carries its real image's index, so losses
find positives by index whatever the mode or the number of views. With `augment.backend=batched`
the views are uint8 crops that the training device finishes (`pretrain.input.batch_augment`);
with `per_image` they are finished, normalised float views.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mixdiff.data.decode import ViewNeed, load_rgb_for
from mixdiff.data.twin_scores import TwinFilter
from mixdiff.pretrain.input.device_decode import ImageFile, draw_crop
from mixdiff.data.tree import ImageTree, load_rgb, match_twins, twin_key
from mixdiff.pretrain.input.views import ANCHOR, AUGMENT_BACKENDS, PARTNER, ViewSpec
from mixdiff.errors import MissingSyntheticError

log = logging.getLogger(__name__)
REAL = 0
_to_tensor = v2.PILToTensor()


@dataclass(frozen=True)
class Sample:
    """One training sample before augmentation: where its images are."""

    index: int
    label: int
    real: str | None  # None: no real image in this sample (synthetic-only modes)
    twins: tuple[tuple[int, str], ...]  # (variant k, path) of the synthetic images it may use


def find_twins(tree: ImageTree, positions: Sequence[int], synthetic_roots: Sequence[str],
               missing_policy: str) -> list[tuple[tuple[int, str], ...]]:
    """For each real image at `positions`, the synthetic twins found in each root.

    With missing_policy='error', any missing twin raises an error listing the first of them.
    """
    relpaths = [tree.relpaths[i] for i in positions]
    twins: list[list[tuple[int, str]]] = [[] for _ in positions]
    missing: list[str] = []
    for k, root in enumerate(synthetic_roots):
        match = match_twins(relpaths, root)
        for j, rel in match.matched.items():
            twins[j].append((k, str(Path(root) / rel)))
        missing.extend(f"{Path(root) / twin_key(rel)}.*" for rel in match.missing)
    if missing and missing_policy == "error":
        shown = "\n  ".join(missing[:10])
        raise MissingSyntheticError(
            f"{len(missing)} synthetic twins are missing for the {len(positions)} real training "
            f"images, e.g.:\n  {shown}\nGenerate them, or set data.missing_synthetic=fallback_real "
            "to use the real image where no twin exists.")
    if missing:
        alone = sum(1 for t in twins if not t)
        log.warning("%d synthetic twins missing; %d real images have none and fall back to real "
                    "views (data.missing_synthetic=fallback_real)", len(missing), alone)
    return [tuple(t) for t in twins]


def _real_samples(paths, labels, twins) -> list[Sample]:
    return [Sample(j, labels[j], paths[j], ()) for j in range(len(paths))]


def _mixdiff_samples(paths, labels, twins) -> list[Sample]:
    return [Sample(j, labels[j], paths[j], twins[j]) for j in range(len(paths))]


def _synthetic_samples(paths, labels, twins) -> list[Sample]:
    """A real image stands in only where data.missing_synthetic=fallback_real allowed it."""
    return [Sample(j, labels[j], None if twins[j] else paths[j], twins[j])
            for j in range(len(paths))]


def _pooled_samples(paths, labels, twins) -> list[Sample]:
    """Every real and synthetic image an independent sample of its own."""
    pool = [(paths[j], labels[j], ()) for j in range(len(paths))]
    pool += [(None, labels[j], (twin,)) for j in range(len(paths)) for twin in twins[j]]
    return [Sample(n, label, real, t) for n, (real, label, t) in enumerate(pool)]


# data.mode -> how the samples of that mode are made from (real paths, labels, twins). An extra
# sample is a mixdiff one: its real image and its twins (the views differ: `PairedDataset._slots`)
MODES: dict[str, Callable[..., list[Sample]]] = {
    "real": _real_samples, "synthetic": _synthetic_samples, "mixdiff": _mixdiff_samples,
    "pooled": _pooled_samples, "extra": _mixdiff_samples}


def build_samples(tree: ImageTree, positions: Sequence[int], mode: str,
                  synthetic_roots: Sequence[str], missing_policy: str,
                  twin_filter: TwinFilter | None = None) -> list[Sample]:
    """The samples of `mode`, built from the twins `twin_filter` keeps (it counts the rest)."""
    paths = [str(tree.path(i)) for i in positions]
    labels = [int(tree.labels[i]) for i in positions]
    twins = [() for _ in positions] if mode == "real" else \
        find_twins(tree, positions, synthetic_roots, missing_policy)
    if twin_filter is not None and mode != "real":
        kept = [tuple(t for t in found if twin_filter.keeps(t[1])) for found in twins]
        log.info("twin filter %s: %d of %d twins dropped; %d real images keep none and use "
                 "real views in their place", twin_filter.describe(), twin_filter.dropped,
                 sum(map(len, twins)), sum(1 for a, b in zip(twins, kept) if a and not b))
        twins = kept
    return MODES[mode](paths, labels, twins)


class PairedDataset(Dataset):
    """Views of real images and/or their synthetic twins, per `data.mode`.

    * real: every view from the real image (plain SSL).
    * synthetic: every view from one synthetic twin (drawn at random among the variants).
    * mixdiff: anchor-slot views from the real image; partner-slot views from a random synthetic
      twin with probability `p_synthetic`, else from the real image.
    * pooled: real and synthetic images are independent samples, each paired with itself.
    * extra: the anchor and partner views from the real image, and each twin slot's view from
      another of its twins, drawn without replacement (a sample with fewer twins, after
      filtering or a missing twin, uses its real image in the slots left).
    """

    def __init__(self, samples: list[Sample], views: list[ViewSpec], mode: str,
                 p_synthetic: float = 1.0, synthetic_augment: bool = True,
                 backend: str = "per_image", decode: str = "cpu"):
        self.samples, self.views, self.mode, self.decode = samples, views, mode, decode
        self.p_synthetic, self.synthetic_augment = p_synthetic, synthetic_augment
        self.transforms = [AUGMENT_BACKENDS[backend](view) for view in views]  # (augmented, plain)
        # what each slot's views read from its image, so JPEG decoding can skip what none uses
        self.needs: dict[str, list[ViewNeed]] = {
            slot: [need for view in views if view.slot == slot for need in view.needs]
            for slot in dict.fromkeys(view.slot for view in views)}
        self.twin_slots = list(dict.fromkeys(view.slot for view in views if view.twin))

    def __len__(self) -> int:
        return len(self.samples)

    def _slots(self, sample: Sample) -> dict[str, tuple[int, str]]:
        """(source, path) for each slot of this draw."""
        real = (REAL, sample.real)
        if self.mode == "extra":
            order = torch.randperm(len(sample.twins)).tolist()
            drawn = [(sample.twins[k][0] + 1, sample.twins[k][1]) for k in order]
            drawn += [real] * (len(self.twin_slots) - len(drawn))
            return {ANCHOR: real, PARTNER: real, **dict(zip(self.twin_slots, drawn))}
        if not sample.twins:
            return {ANCHOR: real, PARTNER: real}
        k = int(torch.randint(len(sample.twins), ()).item())
        variant, path = sample.twins[k]
        twin = (variant + 1, path)
        if self.mode == "mixdiff":
            use_twin = self.p_synthetic >= 1.0 or torch.rand(()).item() < self.p_synthetic
            return {ANCHOR: real, PARTNER: twin if use_twin else real}
        return {ANCHOR: twin, PARTNER: twin}

    def _views_of(self, slots: dict[str, tuple[int, str]]):
        """Per view: (its worker transform, its source, the path it is cut from). A synthetic
        view gets the plain transform when augment.synthetic_augment is false."""
        for spec, (augmented, plain) in zip(self.views, self.transforms):
            source, path = slots[spec.slot]
            plain_view = source != REAL and not self.synthetic_augment
            yield (plain if plain_view else augmented), source, path

    def _needs_by_path(self, slots: dict[str, tuple[int, str]]) -> dict[str, list[ViewNeed]]:
        """What the views read from each file: one decode per file serves both slots' views."""
        needs: dict[str, list[ViewNeed]] = {}
        for slot, (_, path) in slots.items():
            needs.setdefault(path, []).extend(self.needs[slot])
        return needs

    def __getitem__(self, key: int | tuple[int, int]):
        """`key`: an index, or `(index, draw seed)` from the training sampler: the sample's draws
        then come from that seed alone (`datamodule.ResumableSampler`), and the caller's random
        state is left as it was."""
        if not isinstance(key, tuple):
            return self._item(key)
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._item(index)

    def _item(self, i: int):
        sample = self.samples[i]
        slots = self._slots(sample)
        if self.decode == "device":
            return self._undecoded(sample, slots)
        images = {path: self._image(path, need)
                  for path, need in self._needs_by_path(slots).items()}
        views, sources = [], []
        for transform, source, path in self._views_of(slots):
            views.append(transform(images[path]))
            sources.append(source)
        return sample.index, views, torch.tensor(sources), sample.label

    def _image(self, path: str, needs: list[ViewNeed]):
        """The decoded image the views of one file are cut from (what the transforms take)."""
        return _to_tensor(load_rgb_for(path, needs))

    def _undecoded(self, sample: Sample, slots: dict[str, tuple[int, str]]):
        """data.decode=device: `(index, files, crops, sources, label)`, the files as read and
        each view's crop drawn as its transform would have (collated by device_decode.collate)."""
        needs = self._needs_by_path(slots)
        paths = list(needs)
        files = [ImageFile.read(path, needs[path]) for path in paths]
        crops, sources = [], []
        for transform, source, path in self._views_of(slots):
            image = paths.index(path)
            crops.append((image, *draw_crop(transform, files[image].height,
                                            files[image].width)))
            sources.append(source)
        return sample.index, files, torch.tensor(crops), torch.tensor(sources), sample.label


class LabelledImages(Dataset):
    """Plain (evaluation) views of labelled images: `(image, label)`."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform):
        self.paths, self.labels, self.transform = list(paths), np.asarray(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(_to_tensor(load_rgb(self.paths[i]))), int(self.labels[i])

