"""`mixdiff.PairedImageFolder`: MixDiff's pairing of real images with their diffusion twins, as a
`torch.utils.data.Dataset` for any training loop (plain PyTorch, lightly, solo-learn...).

It is the dataset `mixdiff pretrain` trains on (`PairedDataset`), built from folders and keyword
arguments instead of a run config: the same samples for every data mode, the same slots (which
image each view is cut from), the same draws. With no `transform` the views are the project's own
recipe, exactly as `mixdiff pretrain` draws them with `augment.backend=per_image`; with one, each
view is that transform of its PIL image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from mixdiff.config import MODE_NAMES, RECIPE_NAMES, load_config
from mixdiff.data.decode import ViewNeed
from mixdiff.data.tree import ImageTree, load_rgb
from mixdiff.data.twin_scores import TwinFilter
from mixdiff.errors import ConfigError
from mixdiff.pretrain.input.paired import PairedDataset, build_samples
from mixdiff.pretrain.input.views import build_views

Transform = Callable[[Image.Image], Any]


def _per_view(transform: Transform | Sequence[Transform], count: int) -> list[Transform]:
    """One transform per view: a sequence of them, a multi-view transform that holds one per view
    (lightly's MultiViewTransform and its SimCLRTransform... keep them in `.transforms`), or one
    transform for every view (torchvision's Compose also has `.transforms`: its steps)."""
    if isinstance(transform, (list, tuple)):
        found = list(transform)
    elif any(kind.__name__ == "MultiViewTransform" for kind in type(transform).__mro__):
        found = list(transform.transforms)
    else:
        return [transform] * count
    if len(found) != count:
        raise ConfigError(f"the transform makes {len(found)} views, but this dataset draws {count} "
                          "(views=..., plus synthetic_views in extra mode)")
    return found


class PairedImageFolder(PairedDataset):
    """Views of real images and their synthetic twins, per data mode; item i is `(views, label)`.

    real: a folder of `<class>/<image>` files (or images directly inside it: label -1).
    synthetic: one folder per variant, mirroring `real` (the same relative paths, any image
        extension), as `mixdiff generate` writes them.
    mode: real (every view from the real image), synthetic (from one twin), mixdiff (the first
        view from the real image, the others from a twin with probability `p_synthetic`), pooled
        (real images and twins as independent samples), extra (the real views, then
        `synthetic_views` views of twins as further positives).
    transform: None for the project's `recipe` (uint8 crops, colour, blur... normalised tensors
        of `image_size`); else a callable on a PIL image applied to each view, a sequence of one
        per view, or a multi-view transform holding one per view (lightly's SimCLRTransform).
    views: views per sample before extra mode's twin views (the recipe's own with a recipe).
    scores, min_similarity, require_class_kept: drop twins by their scores (`mixdiff data verify
        --fidelity RUN --scores FILE.csv`); a sample left without twins uses its real image.

    `draw(key)` gives the whole sample: `(index, views, sources, label)`, `sources[v]` 0 for a
    view of the real image and k + 1 for one of the k-th synthetic folder. A key is an index, or
    `(index, seed)`: the draws then come from that seed alone, as `mixdiff pretrain`'s sampler
    asks for them.
    """

    def __init__(self, real: str | Path, synthetic: Sequence[str | Path] = (),
                 mode: str = "mixdiff", transform: Transform | Sequence[Transform] | None = None,
                 views: int = 2, recipe: str = "simclr", image_size: int = 224,
                 p_synthetic: float = 1.0, synthetic_views: int = 1,
                 missing_synthetic: str = "error", scores: str | Path | None = None,
                 min_similarity: float | None = None, require_class_kept: bool = False):
        if mode not in MODE_NAMES:
            raise ConfigError(f"mode {mode!r}: choose one of {', '.join(MODE_NAMES)}")
        if recipe not in RECIPE_NAMES:
            raise ConfigError(f"recipe {recipe!r}: choose one of {', '.join(RECIPE_NAMES)}")
        # the run config these arguments stand for: checked by the same rules, naming the keys
        overrides = {"data.real": real, "data.synthetic": f"[{','.join(map(str, synthetic))}]",
                     "data.mode": mode, "data.image_size": image_size,
                     "data.p_synthetic": p_synthetic, "data.missing_synthetic": missing_synthetic,
                     "augment.recipe": recipe, "augment.backend": "per_image"}
        if recipe == "dino":
            overrides["method"] = "dino"
        if mode == "extra":
            overrides["data.synthetic_views"] = synthetic_views
        cfg = load_config(None, [f"{key}={value}" for key, value in overrides.items()])
        tree = ImageTree.scan(real)
        twin_filter = TwinFilter.read(scores, min_similarity, require_class_kept) \
            if scores else None
        samples = build_samples(tree, np.arange(len(tree)), mode, [str(s) for s in synthetic],
                                missing_synthetic, twin_filter)
        specs = build_views(cfg)
        own = [spec for spec in specs if not spec.twin]
        if transform is not None:  # the slots of `views` views: the first real, the rest partners
            specs = own[:1] + own[1:2] * (views - 1) + [spec for spec in specs if spec.twin]
        elif views != len(own):
            raise ConfigError(f"views={views}: the {recipe} recipe makes {len(own)}; give a "
                              "transform to draw another number")
        super().__init__(samples, specs, mode, p_synthetic, backend="per_image")
        self.classes, self.user_transform = tree.classes, transform is not None
        if transform is not None:
            self.transforms = [(t, t) for t in _per_view(transform, len(specs))]

    def _image(self, path: str, needs: list[ViewNeed]):
        return load_rgb(path) if self.user_transform else super()._image(path, needs)

    def draw(self, key: int | tuple[int, int]) -> tuple[int, list, Any, int]:
        """The whole sample: `(index, views, sources, label)`."""
        return super().__getitem__(key)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[list, int]:
        _, views, _, label = self.draw(key)
        return views, label
