"""results.md: what a researcher pastes into a paper. Per in-distribution dataset a compact table
(rows = settings, mean and spread over seeds; then rows = runs; columns = datasets and suites),
then the long table with every number and what it is, then what is missing."""

from __future__ import annotations

from mixdiff.report.compare import (COMPARED, DIFFERENCE, EQUIVALENT, UNDECIDED, Comparison,
                                    Difference)
from mixdiff.report.id_ood import Point
from mixdiff.report.results import SPREADS, ResultRow, Summary
from mixdiff.report.grouping import Setting

# columns in this order: in-distribution, shift sets, their mean, transfer, then online
_ORDER = {"linear": 0, "knn": 1, "robustness": 2, "transfer": 4, "online_knn": 5,
          "online_probe": 6}
SHIFT_MEAN = "shift mean"
MISSING = "–"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], body: list[list[object]], text: int) -> list[str]:
    """A markdown table; the first `text` columns left-aligned, numbers right-aligned."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" if i < text else "---:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}"


def _columns(rows: list[ResultRow]) -> list[str]:
    order = {}
    for r in rows:
        order.setdefault(r.column, (_ORDER.get(r.command, 3), r.column))
    return sorted(order, key=order.get)


def _with_shift_mean(columns: list[str], rows: list[ResultRow]) -> list[str]:
    shift = {r.column for r in rows if r.command == "robustness"}
    if not shift:
        return columns
    last = max(i for i, c in enumerate(columns) if c in shift)
    return columns[:last + 1] + [SHIFT_MEAN] + columns[last + 1:]


def _values(rows: list[ResultRow], runs: set[str], column: str) -> list[float]:
    return [r.value for r in rows if r.run in runs and r.column == column]


def _setting_table(shown: list[Setting], scoped: list[ResultRow], columns: list[str],
                   point_of: dict, spread: str) -> list[str]:
    body = []
    for s in shown:
        runs, cells = {r.name for r in s.runs}, []
        for c in columns:
            point, values = point_of.get(s.label), _values(scoped, runs, c)
            if c == SHIFT_MEAN:
                cells.append(point.y.percent() if point else MISSING)
            else:
                cells.append(Summary.of(values, spread).percent() if values else MISSING)
        body.append([s.label, len(s.runs)] + cells)
    return _table(["setting", "n"] + columns, body, text=1)


def _run_table(shown: list[Setting], scoped: list[ResultRow], columns: list[str],
               point_of: dict) -> list[str]:
    run_shift = {run: y for p in point_of.values() for run, y in zip(p.runs, p.run_y)}
    body = []
    for s in shown:
        for r in s.runs:
            cells = []
            for c in columns:
                values = _values(scoped, {r.name}, c)
                cells.append(_percent(run_shift.get(r.name) if c == SHIFT_MEAN else
                                      values[0] if values else None))
            body.append([r.name, s.label, r.seed] + cells)
    return _table(["run", "setting", "seed"] + columns, body, text=2)


def _difference_cell(d: Difference) -> str:
    """`**+5.0 [+2.4, +7.5]** difference`, `+0.3 [−0.6, +0.9] within ±1`, `+0.7 [−0.5, +1.8]
    undecided (MDE 1.6; ±1: 12 seeds)`."""
    margin = f"±{100 * d.margin:g}"
    if d.category == DIFFERENCE:
        return f"**{d.bracket()}** difference"
    if d.category == EQUIVALENT:
        return f"{d.bracket()} within {margin}"
    if d.category == UNDECIDED and d.two_level is not None:
        seeds = d.seeds_needed
        return (f"{d.bracket()} undecided (MDE {100 * d.mde80:.1f}; {margin}: "
                f"{f'{seeds} seeds' if seeds else 'more test images'})")
    return f"{d.bracket()} {d.category}"


def _difference_table(comparisons: list[Comparison]) -> list[str]:
    """One row per (setting, baseline): each compared number's paired difference."""
    pairs = list(dict.fromkeys((c.setting, c.baseline) for c in comparisons))
    names = {"linear": "linear", "knn": "kNN", "shift": SHIFT_MEAN}
    body = []
    for setting, baseline in pairs:
        found = {c.metric: c.difference for c in comparisons
                 if c.setting is setting and c.baseline is baseline}
        seeds = next(iter(found.values())).seeds
        cells = [MISSING if found.get(metric) is None else _difference_cell(found[metric])
                 for metric in COMPARED]
        body.append([setting.label, baseline.label,
                     ",".join(map(str, seeds)) or "none shared"] + cells)
    return _table(["setting", "minus", "seeds"] + [names[m] for m in COMPARED], body, text=2)


POOLED_EPOCHS = {
    "real": "each epoch draws as many samples from the pool of real and synthetic images as there "
            "are real images (data.pooled_epoch=real), so it runs the optimiser steps of the other "
            "modes",
    "all": "each epoch goes through every real and synthetic image (data.pooled_epoch=all), so it "
           "runs more optimiser steps than the other modes (twice as many with one variant)"}


def _compute_notes(shown: list[Setting]) -> list[str]:
    """How much training a pooled setting had: it is the one mode whose epoch length is a
    choice."""
    notes = []
    for s in shown:
        if s.reference or s.mode != "pooled":
            continue
        record = s.runs[0]
        choice = str(record.setting("data.pooled_epoch", "all"))
        samples = record.data.get("epoch_samples")
        count = f" ({samples} samples an epoch)" if samples else ""
        notes.append(f"`{s.label}`: {POOLED_EPOCHS.get(choice, choice)}{count}.")
    return notes


DIFFERENCES_TEXT = (
    "Differences in points: the mean over the seeds both settings have of each seed's difference "
    "(the same seed: the same initialisation and data order), with its 95% interval in brackets. "
    "Where both kept per-image predictions on the same test images (their fingerprints match), "
    "the interval counts the test images' noise as well as the seeds'; otherwise it is the "
    "t-interval over seeds (results.json has both: `ci95_two_level`, `ci95`). **difference**: "
    "the interval excludes zero and the comparison survives Holm's correction over all of "
    "this report's comparisons (`holm`); **within ±m**: the whole interval lies within the "
    "equivalence margin (`equivalent`); **undecided**: neither, with the minimum effect these "
    "seeds detect with 80% power (`mde80`) and the seeds ±m would take (`seeds_needed`). "
    "Fewer than 3 shared seeds make no claim.")


def _long_table(rows: list[ResultRow]) -> list[str]:
    return _table(
        ["run", "online/offline", "command", "dataset", "split", "weights", "metric", "protocol",
         "classes", "images", "epoch", "value (%)", "top-5 (%)"],
        [[r.run, r.evaluation, r.command, r.dataset, r.split, r.weights, r.metric, r.protocol,
          r.classes or MISSING, r.images or MISSING,
          MISSING if r.checkpoint_epoch is None else r.checkpoint_epoch, _percent(r.value),
          _percent(r.top5)] for r in rows], text=8)


def render(settings: list[Setting], rows: list[ResultRow], points: list[Point], spread: str,
           notes: list[str], homes: dict[str, str], comparisons: list[Comparison]) -> str:
    runs = [r for s in settings for r in s.runs]
    lines = ["# Results", "",
             (f"{len(runs)} run(s) in {len(settings)} setting(s). Accuracies in %. Numbers are "
              "offline (`mixdiff eval` on the frozen features of the run's checkpoint) unless "
              "marked online (measured during pre-training, at the last epoch that evaluated). "
              f"Setting rows: the mean over their n seeds and the spread ({SPREADS[spread]}). "
              "The last table says what every number is (protocol, split, classes, images, "
              "weights, checkpoint epoch); results.csv and results.json hold them as fractions."),
             ""]
    for home in dict.fromkeys(homes.values()):  # one section per in-distribution dataset
        shown = [s for s in settings if homes[s.label] == home]
        names = {r.name for s in shown for r in s.runs}
        scoped = [r for r in rows if r.run in names]
        columns = _with_shift_mean(_columns(scoped), scoped)
        point_of = {p.setting.label: p for p in points if p.dataset == home}
        lines += [f"## {home}", ""]
        if point_of:
            suites = next(iter(point_of.values())).suites
            lines += [(f"`{SHIFT_MEAN}`: mean top-1 over {', '.join(suites)} (the shift sets "
                       "every run here has)."), ""]
        lines += _setting_table(shown, scoped, columns, point_of, spread) + [""]
        lines += [note for note in _compute_notes(shown) for note in (note, "")]
        compared = [c for c in comparisons if homes[c.setting.label] == home]
        if compared:
            lines += ["Each setting against the untrained encoder and against real data.", "",
                      DIFFERENCES_TEXT, ""] + _difference_table(compared) + [""]
        lines += _run_table(shown, scoped, columns, point_of) + [""]
    lines += ["## Every number", ""] + _long_table(rows) + [""]
    if notes:
        lines += ["## Missing or left out", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)
