"""Fashion-MNIST from its four idx files (Debian's `dataset-fashion-mnist`) to an image tree."""

from __future__ import annotations

import gzip
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import track

from mixdiff.data.tree import list_images
from mixdiff.errors import DatasetError
from mixdiff.io import atomic_open

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
SPLITS = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8}
OWN_NAME = re.compile(r"\d{5}\.png")  # what prepare() writes: the image's index in its split


def image_name(index: int) -> str:
    return f"{index:05d}.png"


@dataclass(frozen=True)
class PreparedSplit:
    """One split after prepare(): what is on disk, and what this call changed."""

    images: int  # image files under OUT/<split> now (counted on disk)
    written: int  # new files
    repaired: int  # files already there that did not hold their image (cut short, other), rewritten
    removed: int  # files of an earlier prepare that are not in the requested set
    foreign: int  # image files this command did not write (never touched)


def _find(source: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (source / name).is_file():
            return source / name
    raise DatasetError(
        f"Fashion-MNIST file {stem}(.gz) not found in {source}. Install Debian's package "
        "(`apt-get install dataset-fashion-mnist`, files under /usr/share/datasets/fashion-mnist) "
        "or pass --source DIR holding the four idx files.")


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format: magic, dims, big-endian sizes, raw uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: holds {data.size} values, its header says {shape}")
    return data.reshape(shape)


def holds(path: Path, pixels: np.ndarray) -> bool:
    """Whether the file at `path` decodes to exactly `pixels` (a re-run keeps only such files:
    one cut short by a killed copy, or another image under the name, is written again)."""
    try:
        with Image.open(path) as image:
            return image.mode == "L" and np.array_equal(np.asarray(image), pixels)
    except Exception:  # PIL raises many types for files that are not (whole) images
        return False


def read_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = SPLITS[split]
    images = read_idx(_find(source, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(source, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DatasetError(f"{source}: {split} has {len(images)} images but {len(labels)} labels")
    return images, labels


def prepare(out: str | Path, source: str | Path = DEBIAN_DIR, per_class: int | None = None,
            show_progress: bool = True, test_per_class: int | None = None
            ) -> dict[str, PreparedSplit]:
    """Make `out/{train,test}/<class>/<index>.png` exactly the requested set: files already there
    that hold their image are kept (a re-run resumes), those that do not are written again, and
    files of an earlier prepare that are not in the set (e.g. it
    kept more per class) are removed. Files of any other name are never touched.

    `per_class` keeps the first N images of each class (for quick experiments), in both splits
    unless `test_per_class` gives the test split's own (1,000 or more: all of its 10,000).
    """
    source, out = Path(source), Path(out)
    arrays = {split: read_split(source, split) for split in SPLITS}  # fail before writing anything
    prepared = {}
    console = Console(stderr=True)
    for split, (images, labels) in arrays.items():
        keep = np.arange(len(labels))
        count = test_per_class if split == "test" and test_per_class is not None else per_class
        if count is not None:
            keep = np.concatenate([np.flatnonzero(labels == c)[:count] for c in range(10)])
            keep.sort()
        wanted = {(CLASSES[labels[i]], image_name(i)) for i in keep}
        removed = 0
        for name in CLASSES:
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in folder.iterdir():
                if OWN_NAME.fullmatch(path.name) and (name, path.name) not in wanted \
                        and path.is_file():
                    path.unlink()
                    removed += 1
        written = repaired = 0
        for i in track(keep, description=f"fashion-mnist {split}", transient=True,
                       console=console, disable=not (show_progress and console.is_terminal)):
            target = out / split / CLASSES[labels[i]] / image_name(i)
            if target.exists() and holds(target, images[i]):
                continue
            repaired += target.exists()
            written += not target.exists()
            with atomic_open(target, "wb") as handle:
                Image.fromarray(images[i], mode="L").save(handle, format="PNG")
        on_disk = list_images(out / split)
        prepared[split] = PreparedSplit(images=len(on_disk), written=written, repaired=repaired,
                                        removed=removed, foreign=len(on_disk) - len(keep))
    return prepared
