"""ImageNet-100 (the CMC class list, shipped with the package) as a tree of links into ImageNet."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mixdiff.errors import DatasetError


def class_list() -> list[str]:
    text = resources.files("mixdiff.data").joinpath("classes/imagenet100_cmc.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def prepare(out: str | Path, imagenet_root: str | Path) -> dict[str, int]:
    """Link `imagenet_root/{train,val}/<wnid>` into `out/{train,val}/<wnid>` for the 100 classes.

    Nothing is copied; the result is an ordinary image tree. Returns the class folders per split.
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
            link = out / split / wnid
            if not link.exists():
                link.symlink_to((root / split / wnid).resolve(), target_is_directory=True)
        counts[split] = len(wnids)
    return counts
