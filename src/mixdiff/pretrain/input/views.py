"""View recipes: which augmentation each view of a sample gets, and from which image it is cut.

Every view is cut from one of two *slots* of a sample. In `mixdiff` mode the `anchor` slot holds the
real image and the `partner` slot its synthetic twin; in the other modes both slots hold the same
image. A recipe is a list of views, so a two-view recipe and DINO's multi-crop are the same thing.
In `extra` mode both slots hold the real image, and `data.synthetic_views` views of twins follow the
recipe's first two views, in slots of their own (`twin0`, `twin1`, ...).

A view is described once (`ViewSpec`: its crop and its `Photometric` ops) and run by either backend
(`augment.backend`, registry `AUGMENT_BACKENDS`): `per_image` runs everything per image in the
loader workers (torchvision v2); `batched` has the workers crop and flip to uint8 tensors and runs
the photometric ops on the whole batch on the training device (`pretrain.input.batch_augment`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable

from omegaconf import DictConfig
from torchvision.transforms import v2

from mixdiff.data.decode import ViewNeed
from mixdiff.data.eval_transform import normalise, plain_view, resize_and_centre_crop

ANCHOR, PARTNER = "anchor", "partner"
TWIN = "twin"  # data.mode=extra: slot twin<k> holds the k-th twin drawn for the sample
BLUR_SIGMA = (0.1, 2.0)  # SimCLR's Gaussian blur: sigma uniform in this range (both backends)
SOLARIZE_THRESHOLD = 128  # of 255: pixels at or above are inverted


def blur_kernel_size(size: int) -> int:
    """~10% of the view's side, odd (23 px at 224), at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


@dataclass(frozen=True)
class Photometric:
    """The colour and filter ops of an augmented view, applied after its crop and flip, in this
    order: colour jitter (p, the four factors in a random order), greyscale, blur, solarise."""

    color_jitter_p: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale_p: float
    blur_p: float
    solarize_p: float

    @classmethod
    def from_config(cls, aug: DictConfig, blur_p: float, solarize_p: float) -> "Photometric":
        return cls(aug.color_jitter_p, aug.brightness, aug.contrast, aug.saturation, aug.hue,
                   aug.grayscale_p, blur_p, solarize_p)


@dataclass(frozen=True)
class ViewSpec:
    """One view of a training sample. `scale` and `photometric` are None for a plain view (resize
    the short side, centre crop), which is also what a synthetic image gets when
    `augment.synthetic_augment=false`."""

    slot: str  # ANCHOR or PARTNER
    size: int
    scale: tuple[float, float] | None  # RandomResizedCrop's area range
    photometric: Photometric | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    teacher: bool = False  # DINO: the teacher sees this view (the global crops)

    @property
    def twin(self) -> bool:
        """An extra positive (data.mode=extra): a view of a twin added to the real views."""
        return self.slot.startswith(TWIN)

    @property
    def augmented_view(self) -> bool:
        return self.photometric is not None

    @cached_property
    def crop(self) -> v2.Compose:
        """The geometric part, on uint8 images: random-resized crop and flip (a plain view's resize
        and centre crop when the view is not augmented)."""
        if self.scale is None:
            return self.plain_crop
        return v2.Compose([v2.RandomResizedCrop(self.size, scale=self.scale, antialias=True),
                           v2.RandomHorizontalFlip()])

    @cached_property
    def plain_crop(self) -> v2.Compose:
        return v2.Compose(resize_and_centre_crop(self.size))

    @cached_property
    def augmented(self) -> v2.Compose:
        """The whole view, per image (the `per_image` backend): crop, photometric ops, normalise."""
        if self.photometric is None:
            return self.plain
        p = self.photometric
        steps = [*self.crop.transforms,
                 v2.RandomApply([v2.ColorJitter(p.brightness, p.contrast, p.saturation, p.hue)],
                                p=p.color_jitter_p),
                 v2.RandomGrayscale(p=p.grayscale_p)]
        if p.blur_p > 0:
            steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(self.size),
                                                         sigma=BLUR_SIGMA)], p=p.blur_p))
        if p.solarize_p > 0:  # views are uint8 here
            steps.append(v2.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=p.solarize_p))
        return v2.Compose(steps + normalise(self.mean, self.std))

    @cached_property
    def plain(self) -> v2.Compose:
        return plain_view(self.size, self.mean, self.std)

    @property
    def needs(self) -> list[ViewNeed]:
        """What this view reads from its image (for JPEG draft decoding): the smallest crop, and
        the plain view a synthetic image may get instead."""
        crop = [ViewNeed(self.size, self.scale[0])] if self.scale is not None else []
        return crop + [ViewNeed(self.size, None)]


def _view(cfg: DictConfig, slot: str, size: int, scale, blur_p: float, solarize_p: float,
          teacher: bool) -> ViewSpec:
    aug = cfg.augment
    return ViewSpec(slot, size, tuple(scale), Photometric.from_config(aug, blur_p, solarize_p),
                    tuple(aug.mean), tuple(aug.std), teacher)


def local_crop_size(cfg: DictConfig) -> int:
    size = cfg.augment.local_crop_size or round(cfg.data.image_size * 96 / 224)
    if cfg.model.backbone.startswith("vit"):  # whole patches only
        size = max(cfg.model.patch_size, size // cfg.model.patch_size * cfg.model.patch_size)
    return size


def _two_views(cfg: DictConfig, anchor: tuple[float, float], partner: tuple[float, float]
               ) -> list[ViewSpec]:
    """Two augmented views; (blur_p, solarize_p) of the anchor and of the partner slot."""
    size, crop = cfg.data.image_size, (cfg.augment.crop_min_scale, 1.0)
    return [_view(cfg, ANCHOR, size, crop, *anchor, teacher=True),
            _view(cfg, PARTNER, size, crop, *partner, teacher=True)]


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
    aug, size, small = cfg.augment, cfg.data.image_size, local_crop_size(cfg)
    glob, loc = aug.global_crop_scale, aug.local_crop_scale
    return [_view(cfg, ANCHOR, size, glob, 1.0, 0.0, teacher=True),
            _view(cfg, PARTNER, size, glob, 0.1, 0.2, teacher=True),
            *[_view(cfg, ANCHOR, small, loc, 0.5, 0.0, teacher=False)] * aug.local_crops_real,
            *[_view(cfg, PARTNER, small, loc, 0.5, 0.0, teacher=False)]
            * aug.local_crops_synthetic]


def _none(cfg: DictConfig) -> list[ViewSpec]:
    """No augmentation: both views resized and centre-cropped (the paper's no-augmentation run)."""
    aug, size = cfg.augment, cfg.data.image_size
    return [ViewSpec(slot, size, None, None, tuple(aug.mean), tuple(aug.std), True)
            for slot in (ANCHOR, PARTNER)]


# augment.recipe -> the views of one training sample
RECIPES: dict[str, Callable[[DictConfig], list[ViewSpec]]] = {
    "simclr": _simclr, "asymmetric": _asymmetric, "byol": _byol, "dino": _dino, "none": _none}
MULTI_CROP = ("dino",)  # recipes that only DINO can train (views of two sizes)

# augment.backend -> what the loader workers do to a view: (augmented, plain) transforms.
# batched: crop and flip only, to uint8; the training device does the rest (batch_augment.py).
AUGMENT_BACKENDS: dict[str, Callable[[ViewSpec], tuple[Callable, Callable]]] = {
    "batched": lambda view: (view.crop, view.plain_crop),
    "per_image": lambda view: (view.augmented, view.plain)}


def twin_slot(k: int) -> str:
    return f"{TWIN}{k}"


def with_twin_views(views: list[ViewSpec], count: int) -> list[ViewSpec]:
    """data.mode=extra: `count` views of twins after the recipe's first two views (the teacher's
    global crops in DINO), each cut and augmented as the partner view is, and never shown to
    DINO's teacher. Placed there, they share the forward pass of the same-sized views, so
    BatchNorm normalises real and synthetic views together."""
    partner = next(view for view in views if view.slot == PARTNER)
    twins = [replace(partner, slot=twin_slot(k), teacher=False) for k in range(count)]
    return views[:2] + twins + views[2:]


def build_views(cfg: DictConfig) -> list[ViewSpec]:
    """The views of one training sample for `augment.recipe` (and the twins' views in extra
    mode)."""
    views = RECIPES[cfg.augment.recipe](cfg)
    if cfg.data.mode == "extra":
        views = with_twin_views(views, cfg.data.synthetic_views)
    return views


def twin_positions(views: list[ViewSpec]) -> list[int]:
    """The positions of the twins' views (extra mode; none in the other modes)."""
    return [i for i, view in enumerate(views) if view.twin]


def extra_compute(views: list[ViewSpec]) -> float:
    """The pixels of all views over those of the recipe's own: what the twins' views add to a
    step's forward and backward passes (1.5 for [real, real, twin])."""
    pixels = [view.size ** 2 for view in views]
    return sum(pixels) / sum(p for p, view in zip(pixels, views) if not view.twin)
