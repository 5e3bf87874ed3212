"""View recipes: which augmentation each view of a sample gets, and from which image it is cut.

Every view is cut from one of two *slots* of a sample. In `mixdiff` mode the `anchor` slot holds the
real image and the `partner` slot its synthetic twin; in the other modes both slots hold the same
image. A recipe is a list of views, so a two-view recipe and DINO's multi-crop are the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from omegaconf import DictConfig
from torchvision.transforms import v2

ANCHOR, PARTNER = "anchor", "partner"


@dataclass(frozen=True)
class ViewSpec:
    slot: str  # ANCHOR or PARTNER
    size: int
    augmented: Callable[[torch.Tensor], torch.Tensor]
    plain: Callable[[torch.Tensor], torch.Tensor]  # for synthetic images when synthetic_augment=False
    teacher: bool = False  # DINO: the teacher sees this view (the global crops)


def _finish(aug: DictConfig) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(aug.mean), list(aug.std))]


def plain_view(size: int, aug: DictConfig, resize_ratio: float = 1.0) -> v2.Compose:
    """Resize the short side, centre crop, normalise: evaluation, and the `none` recipe."""
    return v2.Compose([v2.Resize(round(size * resize_ratio), antialias=True), v2.CenterCrop(size),
                       *_finish(aug)])


def augmented_view(size: int, aug: DictConfig, scale: tuple[float, float], blur_p: float,
                   solarize_p: float) -> v2.Compose:
    """The SimCLR/BYOL family of augmentations (crop, flip, colour, grey, blur, solarize)."""
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the side, odd (23 px at 224)
    steps = [
        v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)],
                       p=aug.color_jitter_p),
        v2.RandomGrayscale(p=aug.grayscale_p),
    ]
    if blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # views are uint8 here
    return v2.Compose(steps + _finish(aug))


def local_crop_size(cfg: DictConfig) -> int:
    size = cfg.augment.local_crop_size or round(cfg.data.image_size * 96 / 224)
    if cfg.model.backbone.startswith("vit"):  # whole patches only
        size = max(cfg.model.patch_size, size // cfg.model.patch_size * cfg.model.patch_size)
    return size


def _two_views(cfg: DictConfig, anchor: tuple[float, float], partner: tuple[float, float]
               ) -> list[ViewSpec]:
    """Two augmented views; (blur_p, solarize_p) of the anchor and of the partner slot."""
    aug, size = cfg.augment, cfg.data.image_size
    crop, plain = (aug.crop_min_scale, 1.0), plain_view(size, aug)
    return [ViewSpec(ANCHOR, size, augmented_view(size, aug, crop, *anchor), plain, True),
            ViewSpec(PARTNER, size, augmented_view(size, aug, crop, *partner), plain, True)]


def _simclr(cfg: DictConfig) -> list[ViewSpec]:
    """The same augmentation for both views (blur and solarize from augment.blur_p/solarize_p)."""
    return _two_views(cfg, *[(cfg.augment.blur_p, cfg.augment.solarize_p)] * 2)


def _asymmetric(cfg: DictConfig) -> list[ViewSpec]:
    """The MixDiff authors' code: the anchor (real) view is always blurred; the partner
    (synthetic in mixdiff mode) is never blurred and solarised with p=0.2."""
    return _two_views(cfg, (1.0, 0.0), (0.0, 0.2))


def _byol(cfg: DictConfig) -> list[ViewSpec]:
    """BYOL's asymmetric recipe: blur 1.0 / 0.1, solarise 0.0 / 0.2."""
    return _two_views(cfg, (1.0, 0.0), (0.1, 0.2))


def _dino(cfg: DictConfig) -> list[ViewSpec]:
    """DINO's multi-crop: two global crops (blur 1.0; blur 0.1 + solarise 0.2), then local crops
    (blur 0.5) cut from the anchor slot (`local_crops_real`) and the partner slot
    (`local_crops_synthetic`)."""
    aug, size = cfg.augment, cfg.data.image_size
    small = local_crop_size(cfg)
    glob, loc = tuple(aug.global_crop_scale), tuple(aug.local_crop_scale)
    plain, local, local_plain = plain_view(size, aug), augmented_view(small, aug, loc, 0.5, 0.0), \
        plain_view(small, aug)
    return [ViewSpec(ANCHOR, size, augmented_view(size, aug, glob, 1.0, 0.0), plain, True),
            ViewSpec(PARTNER, size, augmented_view(size, aug, glob, 0.1, 0.2), plain, True),
            *[ViewSpec(ANCHOR, small, local, local_plain)] * aug.local_crops_real,
            *[ViewSpec(PARTNER, small, local, local_plain)] * aug.local_crops_synthetic]


def _none(cfg: DictConfig) -> list[ViewSpec]:
    """No augmentation: both views resized and centre-cropped (the paper's no-augmentation run)."""
    plain = plain_view(cfg.data.image_size, cfg.augment)
    return [ViewSpec(slot, cfg.data.image_size, plain, plain, True) for slot in (ANCHOR, PARTNER)]


# augment.recipe -> the views of one training sample
RECIPES: dict[str, Callable[[DictConfig], list[ViewSpec]]] = {
    "simclr": _simclr, "asymmetric": _asymmetric, "byol": _byol, "dino": _dino, "none": _none}
MULTI_CROP = ("dino",)  # recipes that only DINO can train (views of two sizes)


def build_views(cfg: DictConfig) -> list[ViewSpec]:
    """The views of one training sample for `augment.recipe`."""
    return RECIPES[cfg.augment.recipe](cfg)


def eval_view(cfg: DictConfig) -> v2.Compose:
    return plain_view(cfg.data.image_size, cfg.augment, cfg.data.eval_resize)
