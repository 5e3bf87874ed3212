"""A grid of real images beside their synthetic twins, one row per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixdiff.data.tree import ImageTree, load_rgb, match_twins
from mixdiff.errors import MissingSyntheticError
from mixdiff.report.figures import pyplot, save


GRID_COMMAND = "data grid"


def pairs_grid(real: str | Path, synthetic: list[str | Path], out: str | Path, rows: int = 8,
               seed: int = 0, command: str = GRID_COMMAND) -> Path:
    """Save a PNG: column 0 the real image, then one column per synthetic root. Rows are a seeded
    pick among the images that have a twin in every root, spread over the classes. `command`:
    the mixdiff command it is drawn for (`data grid`, or `report`'s pairs.png)."""
    plt = pyplot()
    tree = ImageTree.scan(real)
    matches = [match_twins(tree.relpaths, root).matched for root in synthetic]
    complete = [i for i in range(len(tree)) if all(i in m for m in matches)]
    if not complete:
        raise MissingSyntheticError(f"no image of {real} has a twin in every synthetic root "
                                    f"({', '.join(map(str, synthetic))}): nothing to show")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i in rng.permutation(complete):
        by_class.setdefault(int(tree.labels[i]), []).append(int(i))
    chosen: list[int] = []
    while len(chosen) < min(rows, len(complete)):  # round-robin over classes
        for members in by_class.values():
            if members and len(chosen) < rows:
                chosen.append(members.pop())
    columns = 1 + len(synthetic)
    fig, axes = plt.subplots(len(chosen), columns, figsize=(1.6 * columns, 1.6 * len(chosen)),
                             squeeze=False)
    for r, i in enumerate(chosen):
        images = [load_rgb(tree.path(i))] + [load_rgb(Path(root) / m[i])
                                             for root, m in zip(synthetic, matches)]
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("real" if c == 0 else Path(synthetic[c - 1]).name, fontsize=9)
            if c == 0 and tree.labelled:
                ax.set_ylabel(tree.classes[tree.labels[i]], fontsize=7)
    return save(fig, out, command)
