"""The paper's two numbers per setting: in-distribution top-1 and the mean top-1 over the
distribution-shift sets, as a mean and a spread over seeds.

A run's in-distribution number is its offline linear result on its own dataset (kNN where it has
no linear one), with its default weights (DINO: the teacher); its shift number is the mean `top1`
of its robustness results with the same weights, over the suites that every run of the same
in-distribution dataset has (so that the means are comparable). Runs are only compared, and seeds
only averaged, within one in-distribution dataset, split and class count.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from mixdiff.report.results import (ResultRow, Summary, evaluated_on, in_distribution,
                                    shift_rows)
from mixdiff.report.grouping import Setting
from mixdiff.runs import PIXELS


@dataclass(frozen=True)
class Point:
    setting: Setting
    dataset: str  # what the x axis measures: "fashion-mnist test, 10 classes"
    id_command: str  # "linear", "knn", or "linear/knn" when seeds differ
    x: Summary  # in-distribution top-1 over the seeds
    y: Summary  # mean shift-set top-1 over the seeds
    runs: tuple[str, ...]
    suites: tuple[str, ...]  # the shift sets y averages
    run_x: tuple[float, ...]  # per run, in the order of `runs`
    run_y: tuple[float, ...]


def id_vs_ood_points(settings: list[Setting], rows: list[ResultRow],
                     spread: str = "std") -> tuple[list[Point], list[str]]:
    """One point per (in-distribution dataset, setting), and notes on the runs left out."""
    notes: list[str] = []
    per_run: dict[str, dict] = {}  # run -> {"setting", "id", "shift": {suite: top1}}
    for setting in settings:
        for record in setting.runs:
            id_row = in_distribution(rows, record)
            shift = {r.dataset: r.top1 for r in shift_rows(rows, record.name, id_row.weights)
                     } if id_row else {}
            lacking = [what for what, found in (("an in-distribution (linear or kNN) result",
                                                 id_row), ("robustness results", shift))
                       if not found]
            if lacking and record.kind == PIXELS:  # a floor on the in-distribution set only
                continue
            if lacking:
                notes.append(f"{record.name}: not in id_vs_ood: it lacks {' and '.join(lacking)}")
                continue
            per_run[record.name] = {"setting": setting, "id": id_row, "shift": shift}
    points = []
    for dataset in dict.fromkeys(evaluated_on(v["id"]) for v in per_run.values()):
        members = {name: v for name, v in per_run.items() if evaluated_on(v["id"]) == dataset}
        suites = sorted(set.intersection(*(set(v["shift"]) for v in members.values())))
        dropped = sorted(set().union(*(v["shift"] for v in members.values())) - set(suites))
        if dropped:
            notes.append(f"{dataset}: shift mean over {', '.join(suites) or 'nothing'} only; "
                         f"{', '.join(dropped)} left out (not measured for every run)")
        if not suites:
            continue
        for setting in settings:
            runs = [(name, v) for name, v in members.items() if v["setting"] is setting]
            if not runs:
                continue
            commands = sorted({v["id"].command for _, v in runs}, reverse=True)
            x = tuple(v["id"].top1 for _, v in runs)
            y = tuple(statistics.fmean(v["shift"][s] for s in suites) for _, v in runs)
            points.append(Point(setting, dataset, "/".join(commands), Summary.of(list(x), spread),
                                Summary.of(list(y), spread), tuple(name for name, _ in runs),
                                tuple(suites), x, y))
    return points, notes
