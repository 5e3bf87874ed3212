"""ImageNet class data: wnid <-> IN-1k index <-> name, ImageNet-100, and the class lists and
mappings of ImageNet-A, ImageNet-R and ObjectNet (files in `classes/`, see classes/PROVENANCE.md).

The IN-1k index is the standard PyTorch/timm one: the position of the wnid in the sorted list of the
1000 ILSVRC-2012 wnids (what an ImageFolder over ImageNet's train/ gives), not the devkit order.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources

from mixdiff.data.imagenet100 import class_list as _imagenet100_class_list

_WNID = re.compile(r"n\d{8}")


def is_wnid(name: str) -> bool:
    """Whether `name` looks like a WordNet id (n + 8 digits), the name of an ImageNet class folder."""
    return _WNID.fullmatch(name) is not None


def _read(name: str) -> str:
    return resources.files("mixdiff.evaluate").joinpath("classes", name).read_text()


def _lines(name: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in _read(name).splitlines() if line.strip())


@cache
def _in1k_table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    wnids, names = [], []
    for expected, line in enumerate(_lines("imagenet1k_classes.tsv")):
        index, wnid, name = line.split("\t")
        assert int(index) == expected, "imagenet1k_classes.tsv is in index order"
        wnids.append(wnid)
        names.append(name)
    return tuple(wnids), tuple(names)


def in1k_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids, position = IN-1k index."""
    return _in1k_table()[0]


def in1k_names() -> tuple[str, ...]:
    """torchvision's (unique) English names of the 1000 classes, position = IN-1k index."""
    return _in1k_table()[1]


@cache
def in1k_index() -> dict[str, int]:
    """wnid -> IN-1k index."""
    return {wnid: i for i, wnid in enumerate(in1k_wnids())}


def class_name(wnid: str) -> str:
    """The English name of an IN-1k wnid ('n01440764' -> 'tench'); the wnid itself otherwise."""
    index = in1k_index().get(wnid)
    return in1k_names()[index] if index is not None else wnid


@cache
def imagenet100_wnids() -> tuple[str, ...]:
    """ImageNet-100 (CMC's list), in its source order (sort it for ImageFolder label order)."""
    return tuple(_imagenet100_class_list())


@cache
def imagenet_a_wnids() -> frozenset[str]:
    """The 200 classes of ImageNet-A."""
    return frozenset(_lines("imagenet_a_wnids.txt"))


@cache
def imagenet_r_wnids() -> frozenset[str]:
    """The 200 classes of ImageNet-R."""
    return frozenset(_lines("imagenet_r_wnids.txt"))


@cache
def objectnet_folder_labels() -> dict[str, str]:
    """ObjectNet image folder name -> ObjectNet label (all 313 ObjectNet classes)."""
    return json.loads(_read("objectnet_folder_to_label.json"))


@cache
def objectnet_label_wnids() -> dict[str, frozenset[str]]:
    """ObjectNet label -> the IN-1k wnids that count as that label (113 labels, 125 wnids; e.g.
    'Chair' -> barber chair, folding chair, rocking chair). Labels without an ImageNet
    counterpart are absent."""
    wnids = in1k_wnids()
    groups = json.loads(_read("objectnet_to_imagenet_indices.json"))
    return {label: frozenset(wnids[i] for i in indices) for label, indices in groups.items()}
