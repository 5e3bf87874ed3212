"""Training curves of one or more runs, from their metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from mixdiff.errors import DatasetError
from mixdiff.report.figures import pyplot, save

PANELS = (("train/loss", "training loss"),
          ("online_knn/val_top1", "online kNN top-1 (val)"),
          ("online_probe/val_top1", "online linear probe top-1 (val)"))


def read_metrics(run: Path) -> list[dict[str, str]]:
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        raise DatasetError(f"no metrics.csv in {run}: not a `mixdiff pretrain` run directory")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def plot_curves(runs: list[str | Path], out: str | Path) -> Path:
    """One panel per metric, one line per run (labelled by its folder name)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.2))
    for run in runs:
        rows = read_metrics(Path(run))
        for ax, (key, title) in zip(axes, PANELS):
            points = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key)]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=Path(run).name)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
    axes[-1].legend(fontsize=8)
    return save(fig, out)
