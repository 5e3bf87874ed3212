"""Seeded, class-stratified subsets of a labelled image list."""

from __future__ import annotations

from typing import Callable

import numpy as np


def _take_per_class(labels: np.ndarray, count: Callable[[int], int], seed: int) -> np.ndarray:
    """Sorted positions of `count(n)` random members of each class of n members.

    Unlabelled images (label -1) form one group. One seed always gives the same choice, and a
    smaller count takes a prefix of a larger one's.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = [np.empty(0, dtype=np.int64)]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep.append(members[rng.permutation(len(members))][:count(len(members))])
    return np.sort(np.concatenate(keep))


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A `fraction` of each class, and at least one image of every class."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    return _take_per_class(labels, lambda n: max(1, round(fraction * n)), seed)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, held-out positions): a `fraction` of each class held out, but never a
    class's last training image."""
    held = _take_per_class(labels, lambda n: min(n - 1, max(1, round(fraction * n))), seed)
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held
