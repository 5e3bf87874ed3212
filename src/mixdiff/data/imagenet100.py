"""ImageNet-100 (the CMC class list, shipped with the package) as a tree of links into ImageNet."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from mixdiff.errors import DatasetError


def class_list() -> list[str]:
    text = resources.files("mixdiff.data").joinpath("classes/imagenet100_cmc.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def prepare(out: str | Path, imagenet_root: str | Path) -> dict[str, int]:
    """Link `imagenet_root/{train,val}/<wnid>` into `out/{train,val}/<wnid>` for the 100 classes.

    Nothing is copied; the result is an ordinary image tree. Returns the class folders per split.
    A link already there is kept only if it leads to its class folder of this root: one to
    elsewhere (another root, a folder since moved) is made again, and anything else under its
    name (a folder, a file) is refused, never replaced.
    """
    out, root = Path(out), Path(imagenet_root)
    wnids = class_list()
    counts = {}
    for split in ("train", "val"):
        missing = [w for w in wnids if not (root / split / w).is_dir()]
        if missing:
            raise DatasetError(f"{root / split}: {len(missing)} of the ImageNet-100 class folders "
                               f"are missing, e.g. {missing[:3]} (expected <split>/<wnid>/ folders; "
                               "the validation images sorted into class folders)")
        (out / split).mkdir(parents=True, exist_ok=True)
        for wnid in wnids:
            link, target = out / split / wnid, (root / split / wnid).resolve()
            if link.is_symlink() and link.resolve() == target:
                continue
            if link.exists() and not link.is_symlink():
                raise DatasetError(f"{link} is not the link to {target} that prepare makes: move "
                                   "it out of the way (or give another --out)")
            made = link.with_name(f".{wnid}.link")  # then renamed over the old: never neither
            made.unlink(missing_ok=True)
            made.symlink_to(target, target_is_directory=True)
            os.replace(made, link)
        counts[split] = len(wnids)
    return counts
