"""The paper's figure: in-distribution top-1 against mean distribution-shift top-1, one point per
setting (mean over seeds, with error bars), one panel per in-distribution dataset."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mixdiff.report.figures import figure_legend, pyplot, save
from mixdiff.report.id_ood import Point
from mixdiff.report.results import SPREADS
from mixdiff.report.style import legend_title, setting_styles

ID_PROTOCOLS = {"linear": "offline linear probe", "knn": "offline kNN",
                "linear/knn": "offline linear probe (kNN where a run has none)"}


def _seeds(point: Point) -> str:
    return f"{point.x.n} seed{'s' if point.x.n > 1 else ''}"


def plot_id_vs_ood(points: list[Point], out: str | Path, spread: str = "std") -> Path:
    plt = pyplot()
    datasets = list(dict.fromkeys(p.dataset for p in points))
    settings = list(dict.fromkeys(p.setting for p in points))
    styles = setting_styles(settings)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.4 * len(datasets) + 3.0, 4.8),
                             squeeze=False, layout="constrained")
    for ax, dataset in zip(axes[0], datasets):
        shown = [p for p in points if p.dataset == dataset]
        for p in shown:
            style = styles[p.setting.label]
            ax.errorbar(100 * p.x.mean, 100 * p.y.mean,
                        xerr=[[100 * (p.x.mean - p.x.low)], [100 * (p.x.high - p.x.mean)]],
                        yerr=[[100 * (p.y.mean - p.y.low)], [100 * (p.y.high - p.y.mean)]],
                        fmt=style.marker, color=style.colour, markersize=11 if
                        style.marker == "*" else 8, markeredgecolor="black", markeredgewidth=0.6,
                        ecolor=style.colour, elinewidth=1.2, capsize=3, alpha=0.95,
                        label=f"{p.setting.label}  ({_seeds(p)})")
            if p.setting.reference:  # a frame of reference: what no training gives
                ax.axvline(100 * p.x.mean, color=style.colour, linestyle=":", linewidth=1.0)
                ax.axhline(100 * p.y.mean, color=style.colour, linestyle=":", linewidth=1.0)
        commands = sorted({p.id_command for p in shown}, key=len)
        protocol = ID_PROTOCOLS.get(commands[-1] if len(commands) == 1 else "linear/knn")
        ax.set_xlabel(f"in-distribution top-1 (%)\n{protocol}, {dataset}", fontsize=9)
        suites = shown[0].suites
        ax.set_ylabel(f"mean top-1 over {len(suites)} shift set{'s' * (len(suites) > 1)} (%)",
                      fontsize=9)
        ax.set_title("\n".join(textwrap.wrap(f"shift sets: {', '.join(suites)}", 60)),
                     fontsize=8, color="0.3")
        ax.grid(True, alpha=0.3)
        ax.margins(0.12)
    many = any(p.x.n > 1 for p in points)
    bars = f"bars: {SPREADS[spread]}" if many else "one seed per point"
    figure_legend(fig, loc="outside right center", title=legend_title(settings),
                  title_fontsize=9)
    fig.suptitle(f"In-distribution vs. distribution-shift top-1\n(points: mean over seeds; "
                 f"{bars})", fontsize=10.5)
    return save(fig, out)
