"""Per-dataset accuracies of each setting on one radar per in-distribution dataset: one axis per
dataset or suite (in-distribution, shift sets, transfer sets), each scaled min-max over the
settings shown (inner ring = the lowest, rim = the highest; the raw range is printed on the axis).
With fewer than 3 axes a radar says nothing, so the same numbers are drawn as grouped bars."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixdiff.report.figures import figure_legend, pyplot, save
from mixdiff.report.results import SHIFT, ResultRow, Summary, evaluated_on, in_distribution
from mixdiff.report.grouping import Setting
from mixdiff.report.style import setting_styles

INNER = 0.15  # where the lowest value of an axis sits, so that no polygon collapses to a dot
MIN_AXES = 3


@dataclass(frozen=True)
class Panel:
    """The numbers of one radar: values[i][j] = setting i on axis j (mean over seeds)."""

    dataset: str  # the in-distribution dataset of the settings shown
    settings: list[Setting]
    axes: list[str]  # column names of the results: "fashion-mnist linear", "corruptions", ...
    values: list[list[Summary]]

    def scaled(self) -> np.ndarray:
        """Each axis min-max scaled over the settings to [INNER, 1]; a constant axis sits mid-way."""
        raw = np.array([[v.mean for v in row] for row in self.values]).reshape(
            len(self.settings), len(self.axes))
        low, high = raw.min(axis=0), raw.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        scaled = INNER + (1 - INNER) * (raw - low) / span
        return np.where(high > low, scaled, (1 + INNER) / 2)


def radar_panels(settings: list[Setting], rows: list[ResultRow],
                 spread: str = "std") -> tuple[list[Panel], list[str]]:
    """One panel per in-distribution dataset; its axes are the run's own in-distribution result
    and its shift and transfer results, kept where every setting of the panel has them. The
    references (untrained, pixels) are left out: each axis is scaled over the settings shown,
    and a floor far below them would squeeze their differences together."""
    notes: list[str] = []
    settings = [s for s in settings if not s.reference]
    columns: dict[str, dict[str, list[float]]] = {}  # setting label -> column -> values
    home: dict[str, str] = {}  # setting label -> its panel
    for setting in settings:
        for record in setting.runs:
            id_row = in_distribution(rows, record)
            if id_row is None:
                continue
            chosen = [r for r in rows if r.run == record.name and r.evaluation == "offline"
                      and r.weights == id_row.weights
                      and (r.command in (SHIFT, "transfer") or r is id_row)]
            for r in chosen:
                columns.setdefault(setting.label, {}).setdefault(r.column, []).append(r.value)
            home.setdefault(setting.label, evaluated_on(id_row))
    panels = []
    for dataset in dict.fromkeys(home.values()):
        shown = [s for s in settings if home.get(s.label) == dataset]
        present = [set(columns[s.label]) for s in shown]
        axes = [c for c in dict.fromkeys(c for s in shown for c in columns[s.label])
                if all(c in p for p in present)]
        dropped = sorted(set().union(*present) - set(axes))
        if dropped:
            notes.append(f"radar {dataset}: {', '.join(dropped)} left out (not measured for every "
                         "setting shown)")
        values = [[Summary.of(columns[s.label][c], spread) for c in axes] for s in shown]
        panels.append(Panel(dataset, shown, axes, values))
    without = [s.label for s in settings if s.label not in home]
    if without:
        notes.append(f"radar: {', '.join(without)} left out (no in-distribution result)")
    return panels, notes


def _axis_label(panel: Panel, j: int) -> str:
    means = [row[j].mean for row in panel.values]
    low, high = 100 * min(means), 100 * max(means)
    span = f"{low:.1f}-{high:.1f}%" if high > low else f"all {low:.1f}%"
    return f"{panel.axes[j]}\n{span}"


def _radar(ax, panel: Panel, styles) -> None:
    angles = np.linspace(0, 2 * np.pi, len(panel.axes), endpoint=False)
    closed = np.append(angles, angles[0])
    for setting, values in zip(panel.settings, panel.scaled()):
        style = styles[setting.label]
        ax.plot(closed, np.append(values, values[0]), color=style.colour,
                linestyle=style.linestyle, marker=style.marker, markersize=5, linewidth=1.6,
                label=setting.label)
        ax.fill(closed, np.append(values, values[0]), color=style.colour, alpha=0.06)
    ax.set_theta_offset(np.pi / 2)  # the in-distribution axis at the top, then clockwise
    ax.set_theta_direction(-1)
    ax.set_xticks(angles)
    ax.set_xticklabels([])
    for j, angle in enumerate(angles):  # labels outside the rim, aligned away from the centre
        side = np.sin(angle)  # > 0: right of the centre (clockwise from the top)
        ax.text(angle, 1.13, _axis_label(panel, j), fontsize=8, va="center",
                ha="left" if side > 0.1 else "right" if side < -0.1 else "center")
    ax.set_ylim(0, 1.0)
    ax.set_yticks([INNER, (1 + INNER) / 2, 1.0])
    ax.set_yticklabels([])
    ax.spines["polar"].set_visible(False)
    ax.set_title(f"in-distribution: {panel.dataset}", fontsize=9.5, pad=40)


def _bars(ax, panel: Panel, styles) -> None:
    width = 0.8 / len(panel.settings)
    for i, (setting, values) in enumerate(zip(panel.settings, panel.values)):
        x = np.arange(len(panel.axes)) + (i - (len(panel.settings) - 1) / 2) * width
        style = styles[setting.label]
        ax.bar(x, [100 * v.mean for v in values], width, color=style.colour,
               edgecolor="black", linewidth=0.5, hatch=style.hatch,
               yerr=[[100 * (v.mean - v.low) for v in values],
                     [100 * (v.high - v.mean) for v in values]] if setting.runs[1:] else None,
               capsize=2,
               label=setting.label)
    ax.set_xticks(np.arange(len(panel.axes)))
    ax.set_xticklabels(["\n".join(textwrap.wrap(a, 18)) for a in panel.axes], fontsize=8.5)
    ax.set_ylabel("top-1 or the dataset's metric (%)", fontsize=9)
    ax.set_title(f"in-distribution: {panel.dataset}\n(grouped bars: {len(panel.axes)} "
                 f"dataset{'s' * (len(panel.axes) > 1)}, a radar needs {MIN_AXES})", fontsize=9.5)
    ax.grid(True, axis="y", alpha=0.3)


def plot_radar(panels: list[Panel], out: str | Path) -> Path:
    plt = pyplot()
    styles = setting_styles(list(dict.fromkeys(s for p in panels for s in p.settings)))
    fig = plt.figure(figsize=(max(7.0, 6.0 * len(panels)), 7.2), layout="constrained")
    for k, panel in enumerate(panels):
        radar = len(panel.axes) >= MIN_AXES
        ax = fig.add_subplot(1, len(panels), k + 1, projection="polar" if radar else None)
        (_radar if radar else _bars)(ax, panel, styles)
    figure_legend(fig, columns=4, loc="outside lower center", title="method · data",
                  title_fontsize=9)
    radar = any(len(p.axes) >= MIN_AXES for p in panels)
    fig.suptitle("Accuracy per dataset and suite (mean over seeds)" + (
        "\neach axis scaled min-max over the settings shown: inner ring = lowest, rim = highest;"
        "\nthe raw range is printed under each axis name" if radar else ""), fontsize=10)
    return save(fig, out)
