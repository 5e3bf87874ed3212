"""Image trees on disk: `<root>/<class>/<...>/<name>.<ext>`, and twins across trees.

A synthetic root mirrors the real tree: the twin of real `cls/a.JPEG` is whatever image sits at
`cls/a.*` under the synthetic root (the generator may have written another format). Twins are keyed
by relative path without extension, so any number of roots pair with the real tree by name alone.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from mixdiff.data.decode import load_rgb_for
from mixdiff.errors import DatasetError, UnreadableImageError
from mixdiff.io import file_sha256

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def twin_key(relpath: str) -> str:
    """The name a real image and its synthetic twins share: relative path without extension."""
    return str(PurePosixPath(relpath).with_suffix(""))


def list_images(root: str | Path) -> list[str]:
    """Relative POSIX paths of every image under `root`, sorted (hidden files and folders skipped)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} is a file: give the folder of an image tree "
                           "(<class>/<image>)")
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")

    def unreadable(error: OSError) -> None:  # os.walk would skip the folder, and its class
        raise DatasetError(f"cannot read the folder {error.filename}: {error.strerror}; make it "
                           "readable (or remove it) so that no class or image is left out")

    # links are followed (a class folder may live on another disk), but a link back to a folder
    # of the tree (its parent: a loop; another class) would count its images twice or more
    walked: dict[tuple[int, int], str] = {}
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        info = os.stat(dirpath)
        identity = (info.st_dev, info.st_ino)
        if identity in walked:
            raise DatasetError(f"{dirpath} and {walked[identity]} are the same folder (one is a "
                               "symbolic link to the other, or to a folder above it): its images "
                               "would be counted twice; remove the link (or copy the folder)")
        walked[identity] = dirpath
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        found.extend((rel / f).as_posix() for f in filenames if is_image(f) and not f.startswith("."))
    return sorted(found)


@dataclass(frozen=True)
class ImageTree:
    """The images of one tree, with a class label from the first folder of each path.

    A tree whose images sit directly under the root is unlabelled: every label is -1. A tree with
    both is refused: an image beside the class folders belongs to no class, and neither training
    it unlabelled nor leaving it out is what its owner can be assumed to want.
    """

    root: Path
    relpaths: tuple[str, ...]
    classes: tuple[str, ...]
    labels: np.ndarray  # int64, one per relpath

    @classmethod
    def scan(cls, root: str | Path, classes: tuple[str, ...] | None = None) -> "ImageTree":
        """Scan `root`. Pass the `classes` of another tree to label this one in the same order."""
        root = Path(root)
        relpaths = list_images(root)
        if not relpaths:
            raise DatasetError(f"no images found under {root} (expected <class>/<image> files "
                               f"with one of: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        folders = [p.split("/", 1)[0] if "/" in p else None for p in relpaths]
        if all(f is None for f in folders):
            return cls(root, tuple(relpaths), (), np.full(len(relpaths), -1, dtype=np.int64))
        loose = [p for p, f in zip(relpaths, folders) if f is None]
        if loose:
            raise DatasetError(
                f"{root} has class folders and also {len(loose)} image(s) directly in it, which "
                f"belong to no class (e.g. {', '.join(loose[:3])}): move each into its class "
                "folder, or out of the tree")
        if classes is None:
            classes = tuple(sorted({f for f in folders if f is not None}))
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted({f for f in folders if f is not None and f not in index})
        if unknown:
            raise DatasetError(f"{root}: class folders {unknown[:5]} are not among the "
                               f"{len(classes)} training classes")
        labels = np.array([index[f] for f in folders], dtype=np.int64)
        return cls(root, tuple(relpaths), tuple(classes), labels)

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def path(self, i: int) -> Path:
        return self.root / self.relpaths[i]

    def __len__(self) -> int:
        return len(self.relpaths)


ROOT_GROUP = ""  # the group of images directly under a tree's root (an unlabelled tree's)
STAT_CHUNK = 4096  # files stat'ed per task: a thread per file would cost more than its stat


def fingerprint(root: str | Path, relpaths: Sequence[str] | None = None) -> dict:
    """What a tree holds, cheaply enough for ImageNet's 1.28M files: every file's name and size,
    no pixel read. Per class folder (the key of images directly under the root is ""): its image
    count and a digest; and the whole tree's. A resumed run compares it with the one it started
    with (`fingerprint_changes`)."""
    root = Path(root)
    relpaths = list_images(root) if relpaths is None else list(relpaths)

    def sizes(chunk: Sequence[str]) -> list[int]:
        try:
            return [os.stat(root / rel).st_size for rel in chunk]
        except OSError as exc:
            raise DatasetError(f"cannot read {exc.filename}: {exc.strerror}") from None

    chunks = [relpaths[i:i + STAT_CHUNK] for i in range(0, len(relpaths), STAT_CHUNK)]
    with ThreadPoolExecutor(max_workers=8) as pool:  # a network file system answers in parallel
        found = [size for chunk in pool.map(sizes, chunks) for size in chunk]
    groups: dict[str, list[str]] = {}
    for rel, size in zip(relpaths, found):
        groups.setdefault(rel.split("/", 1)[0] if "/" in rel else ROOT_GROUP, []).append(
            f"{rel}\0{size}\n")
    classes = {name: {"images": len(lines), "sha256": _digest(lines)[:16]}
               for name, lines in sorted(groups.items())}
    return {"images": len(relpaths), "sha256": _digest(
        f"{name}\0{group['sha256']}\n" for name, group in classes.items()), "classes": classes}


def images_sha256(names: Sequence[str], files: Sequence[str] | None = None,
                  source_files: Sequence[str] = ()) -> str:
    """The exact fingerprint of a set of images, for what an evaluation scored (a result's
    `images_sha256`; `fingerprint` is the cheap one, for what a run trains on): sha256 over the
    images in order, each one's name (its path relative to the scored folder) and the sha256 of
    its file's bytes (`files`, one per name). Items read from a few container files
    (`source_files`, e.g. CIFAR's pickles) are fingerprinted by those instead."""
    digest = hashlib.sha256()
    for i, name in enumerate(names):
        digest.update(name.encode() + b"\0")
        if files is not None:
            digest.update(file_sha256(files[i]).encode())
        digest.update(b"\n")
    for path in source_files:
        digest.update(file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def _digest(lines) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
    return digest.hexdigest()


def fingerprint_changes(before: dict, now: dict) -> str | None:
    """What changed between two fingerprints of a tree, in words (None: nothing): the images
    added or removed per class (net counts), the classes added or removed, and the classes whose
    files changed at an equal count."""
    if before["sha256"] == now["sha256"]:
        return None
    old, new = before["classes"], now["classes"]

    def name(group: str) -> str:
        return group or "(the root)"

    def listed(groups: list[str], shown: int = 5) -> str:
        more = f" and {len(groups) - shown} more" if len(groups) > shown else ""
        return ", ".join(map(name, groups[:shown])) + more

    parts = [f"{now['images']} images where there were {before['images']}"]
    gone, added = sorted(old.keys() - new.keys()), sorted(new.keys() - old.keys())
    if gone:
        parts.append(f"class(es) removed: {listed(gone)}")
    if added:
        parts.append(f"class(es) added: {listed(added)}")
    counts = {g: new[g]["images"] - old[g]["images"] for g in sorted(old.keys() & new.keys())
              if new[g]["sha256"] != old[g]["sha256"]}
    if more := [g for g, n in counts.items() if n > 0]:
        parts.append(f"{sum(counts[g] for g in more)} image(s) added in {listed(more)}")
    if fewer := [g for g, n in counts.items() if n < 0]:
        parts.append(f"{-sum(counts[g] for g in fewer)} image(s) removed in {listed(fewer)}")
    if same := [g for g, n in counts.items() if n == 0]:
        parts.append(f"other files (names or sizes) in {listed(same)}")
    return "; ".join(parts)


def index_twins(root: str | Path) -> dict[str, str]:
    """{twin key: relative path} for one synthetic root; two files with one key are an error."""
    twins: dict[str, str] = {}
    for rel in list_images(root):
        other = twins.setdefault(twin_key(rel), rel)
        if other != rel:
            raise DatasetError(f"{root}: {other} and {rel} are both the twin of the same real "
                               "image; remove one (a root holds one variant of each image)")
    return twins


@dataclass(frozen=True)
class TwinMatch:
    matched: dict[int, str]  # real image position -> relative path under the synthetic root
    missing: list[str]  # real relative paths without a twin
    extra: list[str]  # synthetic relative paths without a real image


def match_twins(real_relpaths: tuple[str, ...] | list[str], synthetic_root: str | Path) -> TwinMatch:
    twins = index_twins(synthetic_root)
    matched, missing = {}, []
    for i, rel in enumerate(real_relpaths):
        twin = twins.pop(twin_key(rel), None)
        if twin is None:
            missing.append(rel)
        else:
            matched[i] = twin
    return TwinMatch(matched, missing, sorted(twins.values()))


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB; a broken file raises an error naming it."""
    return load_rgb_for(path, None)


def check_readable(path: str | Path) -> str | None:
    """None if the image decodes, else the reason it does not."""
    try:
        load_rgb(path)
    except UnreadableImageError as exc:
        return exc.reason
    return None


def check_header(path: str | Path) -> str | None:
    """None if the file opens as an image (its format and size parse from the header), else the
    reason it does not. Nothing is decoded: a file truncated after its header passes."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (parsed by open; touching it keeps the intent visible)
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # PIL raises many types for files that are not images
        return f"{type(exc).__name__}: {exc}"
    return None


def find_unreadable(paths: Sequence[str | Path], decode: bool = True,
                    on_checked: Callable[[], None] | None = None) -> list[tuple[str, str]]:
    """(path, reason) for each image that does not decode (or, with decode=False, whose header
    does not parse), in the order given. Checked on 8 threads: PIL releases the GIL while it reads
    and decodes. `on_checked` is called once per image (for a progress bar)."""
    check = check_readable if decode else check_header
    failures = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for path, reason in zip(paths, pool.map(check, paths)):
            if reason is not None:
                failures.append((str(path), reason))
            if on_checked is not None:
                on_checked()
    return failures
