"""The evaluation transform every stage shares: resize the short side, centre crop, normalise.

Pre-training's online evaluation, `mixdiff eval` and the `none` view recipe all use it, so it lives
with the data every stage stands on, not with pre-training's augmentations
(`pretrain/input/views.py`).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torchvision.transforms import v2


def resize_and_centre_crop(size: int, resize_ratio: float = 1.0) -> list:
    return [v2.Resize(round(size * resize_ratio), antialias=True), v2.CenterCrop(size)]


def normalise(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def plain_view(size: int, mean, std, resize_ratio: float = 1.0) -> v2.Compose:
    """Resize the short side, centre crop, normalise: evaluation, and the `none` recipe."""
    return v2.Compose(resize_and_centre_crop(size, resize_ratio) + normalise(mean, std))


def eval_view(cfg: DictConfig) -> v2.Compose:
    aug = cfg.augment
    return plain_view(cfg.data.image_size, aug.mean, aug.std, cfg.data.eval_resize)
