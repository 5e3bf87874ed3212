"""Image trees for the benchmarks, cut from scikit-image's sample photos (no download), and the
run config the training benchmarks read them with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_photo_tree(root: Path, n: int, size: int, ext: str = ".jpg", classes: int = 8,
                    seed: int = 0, quality: int = 90) -> Path:
    """`root/class<i % classes>/<i>.<ext>`: n random square crops resized to `size` (JPEG and
    WebP at `quality`)."""
    from skimage import data as photos

    sources = [photos.astronaut(), photos.coffee(), photos.chelsea(), photos.rocket()]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = sources[i % len(sources)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w)))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size)).save(
            folder / f"{i:05d}{ext}", quality=quality)
    return root


def make_real_and_twins(root: Path, n: int, real_size: int, synthetic_size: int,
                        synthetic_format: str) -> None:
    """`root/real` (JPEG) and `root/syn`, its twins as `mixdiff generate` writes them (q95)."""
    make_photo_tree(root / "real", n, real_size, ".jpg", seed=0)
    make_photo_tree(root / "syn", n, synthetic_size, synthetic_format, seed=1, quality=95)


def benchmark_config(root: Path, backend: str, decode: str, mode: str, recipe: str,
                     image_size: int, *overrides: str):
    """The config of a run on `make_real_and_twins(root, ...)`: DINO for its multi-crop recipe,
    SimCLR for the others, no hold-out."""
    from mixdiff.config import load_config

    return load_config(None, [
        f"method={'dino' if recipe == 'dino' else 'simclr'}", f"data.real={root / 'real'}",
        f"data.synthetic=[{root / 'syn'}]", f"data.mode={mode}", f"data.image_size={image_size}",
        f"augment.recipe={recipe}", f"augment.backend={backend}", f"data.decode={decode}",
        "data.val_fraction=0.0", *overrides])
