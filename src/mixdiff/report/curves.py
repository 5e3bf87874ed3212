"""Training curves from metrics.csv: one line per setting (the mean over its seeds, with a band
for their spread), one panel per metric; the online metrics are marked online."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixdiff.report.figures import figure_legend, pyplot, save
from mixdiff.report.results import SPREADS, Summary
from mixdiff.report.grouping import Setting
from mixdiff.report.style import setting_styles
from mixdiff.runs import Metric

# (metrics.csv column, panel title, y label, scale of the plotted value)
PANELS = ((Metric.TRAIN_LOSS, "training loss", "loss", 1.0),
          (Metric.KNN_VAL_TOP1, "ONLINE weighted kNN top-1, val set", "top-1 (%)", 100.0),
          (Metric.PROBE_VAL_TOP1, "ONLINE linear probe top-1, val set", "top-1 (%)", 100.0))


def curve(setting: Setting, column: str, spread: str = "std") -> list[tuple[int, Summary]]:
    """(epoch, value over the seeds) for the epochs every seed of the setting logged."""
    series = [{int(r["epoch"]): float(r[column]) for r in run.metrics if r.get(column)}
              for run in setting.runs if run.metrics]
    if not series:
        return []
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    return [(e, Summary.of([s[e] for s in series], spread)) for e in epochs]


def plot_curves(settings: list[Setting], out: str | Path, spread: str = "std") -> Path:
    plt = pyplot()
    styles = setting_styles(settings)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.4 * len(PANELS), 4.0),
                             layout="constrained")
    for ax, (column, title, ylabel, scale) in zip(axes, PANELS):
        for setting in settings:
            points = curve(setting, column, spread)
            if not points:
                continue
            style = styles[setting.label]
            epochs = np.array([e for e, _ in points]) + 1  # metrics.csv counts epochs from 0
            mean = np.array([s.mean for _, s in points]) * scale
            seeds = max(s.n for _, s in points)
            ax.plot(epochs, mean, color=style.colour, linestyle=style.linestyle,
                    marker=style.marker, markersize=3.5, linewidth=1.4,
                    label=f"{setting.label}" + (f"  ({seeds} seeds)" if seeds > 1 else ""))
            if seeds > 1:
                ax.fill_between(epochs, [s.low * scale for _, s in points],
                                [s.high * scale for _, s in points], color=style.colour,
                                alpha=0.12, linewidth=0)
        if not ax.lines:
            ax.text(0.5, 0.5, f"{column}\nnot in any metrics.csv", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="0.4")
        ax.set_title(title, fontsize=9.5)
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    figure_legend(fig, columns=4, loc="outside lower center")
    several = any(len(s.runs) > 1 for s in settings)
    fig.suptitle("Pre-training curves" + (f" (lines: mean over seeds; bands: "
                                          f"{SPREADS[spread]})"
                                          if several else ""), fontsize=10.5)
    return save(fig, out)
