"""The `batched` augmentation backend: the photometric half of every view, on the training device.

The loader workers deliver each view cropped and flipped as uint8 (`ViewSpec.crop`); when the
batch goes to the training device (`MixDiffDataModule.transfer_batch_to_device`, on a CUDA stream
beside the training step), every sample gets its view's colour jitter (with probability
`color_jitter_p`: its own four factors, applied in its own random order, as torchvision's
ColorJitter draws them per image), greyscale, Gaussian blur (its own sigma) and solarisation, with
the recipe's probabilities per view, then conversion to float and normalisation. A synthetic view
with `augment.synthetic_augment=false` arrives as the plain view and skips them all. Views of one
size (DINO: the global crops; the local crops) go through together.

The ops take one factor per sample and follow torchvision's formulas: kornia's functional ones
(those `kornia.augmentation.ColorJitter` uses: brightness multiplies, contrast and saturation blend
with the greyscale mean and greyscale image; `kornia.filters.gaussian_blur2d` with one sigma per
sample and reflect padding, as torchvision), and our own hue shift (`adjust_hue_turns`), which
gives kornia's result in a third of its operations. The module classes are not used because they
draw one order of the four jitter steps per batch, and from the global random state.

Parameters are drawn on the CPU, before the batch moves (`plan`), from a generator seeded with
(trainer.seed, rank, global step): a run and its resumed copy draw the same on any device, and
nothing waits on the device to learn which samples an op applies to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from itertools import groupby
from typing import Callable, Sequence

import numpy as np
import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
                            adjust_saturation_with_gray_subtraction)
from kornia.filters import gaussian_blur2d
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from mixdiff.pretrain.input.input_stream import to_device
from mixdiff.pretrain.input.paired import REAL
from mixdiff.pretrain.input.views import (BLUR_SIGMA, SOLARIZE_THRESHOLD, Photometric, ViewSpec,
                                blur_kernel_size)


def adjust_hue_turns(images: Tensor, factor: Tensor) -> Tensor:
    """torchvision's hue shift (to HSV, turn the hue by `factor` of a full circle, back to RGB;
    one factor per image), as the closed form of the way back (f(n) = V - C * clamp(min(k, 4 - k),
    0, 1), k = (n + H / 60 degrees) mod 6) over all three channels at once: the same result as
    torchvision's and kornia's (to ~2e-6) in a third of kornia's tensor operations, the costliest
    of the photometric ops (`benchmarks/device_half.py`)."""
    top = images.amax(dim=1, keepdim=True)
    chroma = top - images.amin(dim=1, keepdim=True)
    r, g, b = images.split(1, dim=1)
    # the hue in sextants times the chroma: the largest channel says which two channels' difference
    # gives it (where two tie, either gives the same hue); a grey pixel (chroma 0) has hue 0
    scaled = torch.where(top == r, g - b, torch.where(top == g, (b - r).add_(chroma, alpha=2),
                                                      (r - g).add_(chroma, alpha=4)))
    sextant = scaled.div_(chroma).nan_to_num_(0.0).add_(6 * factor.view(-1, 1, 1, 1))
    offsets = torch.arange(5.0, 0.0, -2.0, device=images.device)  # R, G, B: 5, 3, 1 sextants
    k = sextant.add(offsets.view(1, 3, 1, 1)).remainder_(6)
    return top - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)


def _greyscale(images: Tensor) -> Tensor:
    return rgb_to_grayscale(images).expand(-1, 3, -1, -1)


def _solarize(images: Tensor) -> Tensor:
    return torch.where(images >= SOLARIZE_THRESHOLD / 255, 1 - images, images)


# colour jitter's four steps, in the column order of the drawn factors
JITTER_STEPS = (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
                adjust_saturation_with_gray_subtraction, adjust_hue_turns)
JITTER_NAMES = ("brightness", "contrast", "saturation", "hue")
# the uniform numbers one sample's draw consumes, in this order (a fixed layout keeps runs
# reproducible): jitter gate, 4 factors, 4 order keys, greyscale gate, blur gate, sigma, solarise gate
_UNIFORMS = 13


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one training step's draws on one rank (well mixed, so neighbouring steps and
    ranks are unrelated)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Draw:
    """Per-sample parameters of the photometric ops (rows: samples)."""

    jitter: Tensor  # bool: colour jitter applied
    factors: Tensor  # (n, 4): brightness, contrast, saturation, hue (torchvision's units)
    order: Tensor  # (n, 4): which of the four steps comes first, second...
    grey: Tensor  # bool
    blur: Tensor  # bool
    sigma: Tensor  # the blur's sigma
    solarize: Tensor  # bool

    @staticmethod
    def cat(draws: Sequence["Draw"]) -> "Draw":
        fields = Draw.__dataclass_fields__
        return Draw(**{f: torch.cat([getattr(d, f) for d in draws]) for f in fields})


def draw(photometric: Photometric | None, augment: Tensor, generator: torch.Generator) -> Draw:
    """One view's parameters for len(augment) samples; a sample with augment False (a plain view)
    gets no op. The generator advances by the same amount whatever the view."""
    u = torch.rand(len(augment), _UNIFORMS, generator=generator)
    p = photometric or Photometric(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    low = torch.tensor([max(0.0, 1 - p.brightness), max(0.0, 1 - p.contrast),
                        max(0.0, 1 - p.saturation), -p.hue])
    high = torch.tensor([1 + p.brightness, 1 + p.contrast, 1 + p.saturation, p.hue])
    return Draw(jitter=augment & (u[:, 0] < p.color_jitter_p),
                factors=low + (high - low) * u[:, 1:5],
                order=u[:, 5:9].argsort(dim=1),
                grey=augment & (u[:, 9] < p.grayscale_p),
                blur=augment & (u[:, 10] < p.blur_p),
                sigma=BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, 11],
                solarize=augment & (u[:, 12] < p.solarize_p))


@dataclass(frozen=True)
class GroupPlan:
    """What happens to one group of same-size views, stacked view after view: for each op, the
    rows (samples) it applies to and their parameters, in the order the ops run."""

    views: tuple[int, ...]
    kernel: int  # the blur's kernel side
    draw: Draw  # the parameters it was made from (on the CPU; for inspection)
    jitter: tuple[tuple[int, Tensor, Tensor], ...]  # (step in JITTER_STEPS, rows, factors)
    grey: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor

    @classmethod
    def from_draw(cls, views: tuple[int, ...], kernel: int, d: Draw) -> "GroupPlan":
        jitter = []
        for position in range(4):  # each sample's first step, then each one's second...
            for step in range(4):
                rows = (d.jitter & (d.order[:, position] == step)).nonzero().flatten()
                if len(rows) and (d.factors[rows, step] != (0.0 if step == 3 else 1.0)).any():
                    jitter.append((step, rows, d.factors[rows, step]))
        blur = d.blur.nonzero().flatten()
        return cls(views, kernel, d, tuple(jitter), d.grey.nonzero().flatten(), blur,
                   d.sigma[blur], d.solarize.nonzero().flatten())

    def to(self, device: torch.device) -> "GroupPlan":
        """The plan for images on `device`. The blur's sigmas stay on the CPU: kornia checks them
        there, which on the device would wait for it, and moves them itself."""
        move = partial(to_device, device=device)
        return replace(self, jitter=tuple((s, move(r), move(f)) for s, r, f in self.jitter),
                       grey=move(self.grey), blur=move(self.blur), solarize=move(self.solarize))

    def ops(self) -> list[tuple[str, Tensor, Callable[[Tensor], Tensor]]]:
        """The ops in the order they run: (name, the rows it applies to, the op on those rows)."""
        ops = [(JITTER_NAMES[step], rows, partial(JITTER_STEPS[step], factor=factors))
               for step, rows, factors in self.jitter]
        if len(self.grey):
            ops.append(("greyscale", self.grey, _greyscale))
        if len(self.blur):
            ops.append(("blur", self.blur, partial(
                gaussian_blur2d, kernel_size=self.kernel, sigma=self.sigma[:, None].expand(-1, 2),
                border_type="reflect")))
        if len(self.solarize):
            ops.append(("solarize", self.solarize, _solarize))
        return ops

    def apply(self, images: Tensor) -> Tensor:
        """The photometric ops on float images in [0, 1] (rows of this plan), in place."""
        for _, rows, op in self.ops():
            images[rows] = op(images[rows])
        return images


class BatchAugment:
    """The `batched` backend for a recipe's views: `plan` on the CPU batch, `apply` on the device
    batch (or `__call__` for both at once)."""

    def __init__(self, views: Sequence[ViewSpec], synthetic_augment: bool):
        self.views, self.synthetic_augment = list(views), synthetic_augment
        self.mean, self.std = list(views[0].mean), list(views[0].std)
        self.groups = [tuple(i for i, _ in run)
                       for _, run in groupby(enumerate(views), key=lambda iv: iv[1].size)]

    def plan(self, sources: Tensor, generator: torch.Generator) -> list[GroupPlan]:
        """Draw every sample's parameters; `sources` (batch, views) says which views are real."""
        plans = []
        for group in self.groups:
            draws = []
            for v in group:
                augment = torch.ones(len(sources), dtype=torch.bool)
                if not self.synthetic_augment:  # synthetic views arrive plain and stay so
                    augment = sources[:, v] == REAL
                draws.append(draw(self.views[v].photometric, augment, generator))
            plans.append(GroupPlan.from_draw(group, blur_kernel_size(self.views[group[0]].size),
                                             Draw.cat(draws)))
        return plans

    def apply(self, views: Sequence[Tensor], plans: Sequence[GroupPlan]) -> list[Tensor]:
        """uint8 views (each (batch, 3, S, S), on any device) -> normalised float views."""
        out: list[Tensor] = list(views)
        for plan in plans:
            images = F.to_dtype(torch.cat([views[v] for v in plan.views]), torch.float32,
                                scale=True)
            images = self.normalise(plan.to(images.device).apply(images))
            for v, chunk in zip(plan.views, images.chunk(len(plan.views))):
                out[v] = chunk
        return out

    def normalise(self, images: Tensor) -> Tensor:
        """(images - mean) / std, in place (the constants sent without waiting: `to_device`)."""
        mean, std = (to_device(torch.tensor(v).view(1, -1, 1, 1), images.device)
                     for v in (self.mean, self.std))
        return images.sub_(mean).div_(std)

    def __call__(self, views: Sequence[Tensor], sources: Tensor, generator: torch.Generator
                 ) -> list[Tensor]:
        return self.apply(views, self.plan(sources.cpu(), generator))
