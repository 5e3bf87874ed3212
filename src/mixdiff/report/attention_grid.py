"""Attention maps of several runs over the same images: rows = images, columns = the image, then
one column per run with its best head's attention overlaid and that head's mask outlined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection

from mixdiff.evaluate.attention import RunAttention
from mixdiff.report.figures import pyplot, save

CELL = 2.1  # inches per image
ATTENTION_COMMAND = "attention"


def mask_outline(mask: np.ndarray, size: tuple[int, int]) -> list[list[tuple[float, float]]]:
    """Segments (in image pixel coordinates) along the patch edges between kept and dropped
    patches of a (h, w) mask shown at `size`: a crisp outline that follows the patch grid."""
    h, w = mask.shape
    sy, sx = size[0] / h, size[1] / w
    padded = np.pad(mask.astype(bool), 1)
    segments = []
    for y, x in zip(*np.nonzero(mask)):
        py, px = y + 1, x + 1
        top, left = y * sy - 0.5, x * sx - 0.5  # imshow puts pixel centres on integers
        bottom, right = top + sy, left + sx
        if not padded[py - 1, px]:
            segments.append([(left, top), (right, top)])
        if not padded[py + 1, px]:
            segments.append([(left, bottom), (right, bottom)])
        if not padded[py, px - 1]:
            segments.append([(left, top), (left, bottom)])
        if not padded[py, px + 1]:
            segments.append([(right, top), (right, bottom)])
    return segments


def plot_attention(runs: list[RunAttention], names: list[str], out: str | Path) -> Path:
    """`names`: a label per image (e.g. its class folder and file name)."""
    plt = pyplot()
    columns = 1 + len(runs)
    fig, axes = plt.subplots(len(names), columns, figsize=(CELL * columns, CELL * len(names)
                                                           + 0.9), squeeze=False,
                             layout="constrained")
    threshold = runs[0].maps[0].threshold
    for row, name in enumerate(names):
        image = runs[0].images[row].permute(1, 2, 0).numpy()
        axes[row][0].imshow(image)
        axes[row][0].set_ylabel(name, fontsize=8)
        for col, run in enumerate(runs, start=1):
            maps = run.maps[row]
            shown = run.images[row]
            size = tuple(shown.shape[-2:])
            attention, mask = maps.upsampled(size)
            kept = maps.masks[maps.best_head]
            inside = mask.float().numpy()
            ax = axes[row][col]
            ax.imshow(shown.permute(1, 2, 0).numpy())
            # the map inside the mask; outside it the image is dimmed, so the kept side is plain
            ax.imshow(attention.numpy(), cmap="inferno", alpha=0.65 * inside,
                      interpolation="nearest")  # colours span the map's own min to max
            ax.imshow(np.zeros((*size, 3)), alpha=0.55 * (1 - inside), interpolation="nearest")
            ax.add_collection(LineCollection(mask_outline(kept.numpy(), size), colors="cyan",
                                             linewidths=1.3))
            ax.set_xlabel(f"head {maps.best_head} · mask: {kept.float().mean():.0%} of patches",
                          fontsize=7.5)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image (as run 1 sees it)", fontsize=8.5)
    for col, run in enumerate(runs, start=1):
        axes[0][col].set_title(f"{run.run}\n({run.weights})", fontsize=8.5)
    fig.suptitle(f"Last-block CLS attention of the most concentrated head (lowest entropy; "
                 f"colours from its minimum, dark, to its maximum, bright)\ninside its mask (cyan: the fewest patches "
                 f"holding {threshold:.0%} of its attention, as DINO); outside, the image is "
                 "dimmed", fontsize=9)
    return save(fig, out, ATTENTION_COMMAND)
