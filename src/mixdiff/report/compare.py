"""Differences between two settings, paired by seed, with their 95% interval.

Runs of two settings that share a seed share their initialisation and their data order, so the
difference of their accuracies on that seed cancels most of what the seed decides. The mean of
those per-seed differences, with its Student-t interval, says whether one setting beats the other
by more than the seeds' noise. Accuracies are fractions, like every number in results.json; the
text says them in points (percent).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

from mixdiff.config import flatten
from mixdiff.report.collect import TRAINED, UNTRAINED
from mixdiff.report.results import ResultRow, default_weights, evaluated_on
from mixdiff.report.grouping import NOT_A_SETTING, UNTRAINED_KEYS, Setting
from mixdiff.schema import differences

CONFIDENCE = 0.95


# Fewer seeds give an interval but no claim: with two, the t-interval has one degree of freedom
# (t = 12.7), and two accuracies on a thousand test images often differ by exactly the same
# tenth of a point, a sample spread of zero that would pass for certainty.
MIN_SEEDS_FOR_A_CLAIM = 3


@dataclass(frozen=True)
class Difference:
    """`value − baseline`, the mean over the seeds both have."""

    seeds: tuple[int, ...]
    difference: float  # a fraction (0.012 = +1.2 points)
    ci95: tuple[float, float] | None  # None with a single seed: no spread, no interval
    paired: bool = True  # False: the settings share no seed; a difference of means, no interval

    @property
    def distinguishable(self) -> bool | None:
        """Whether the interval excludes zero; None where there is no interval, or too few
        seeds for a claim (MIN_SEEDS_FOR_A_CLAIM)."""
        if self.ci95 is None or len(self.seeds) < MIN_SEEDS_FOR_A_CLAIM:
            return None
        return self.ci95[0] > 0 or self.ci95[1] < 0

    def points(self) -> str:
        """`+0.9 points (95% CI −1.2 to +3.0, 3 seeds)`; `+0.9 points (1 seed)`."""
        n = len(self.seeds)
        if not self.paired:
            return f"{_signed(self.difference)} points (unpaired: no seed shared)"
        if self.ci95 is None:
            return f"{_signed(self.difference)} points ({n} seed)"
        return (f"{_signed(self.difference)} points (95% CI {_signed(self.ci95[0])} to "
                f"{_signed(self.ci95[1])}, {n} seeds)")

    def bracket(self) -> str:
        """The compact form for tables: `+1.2 [−0.3, +2.7]`, `+1.2 (1 seed)`, `+1.2 (unpaired)`."""
        text = _signed(self.difference)
        if self.ci95 is not None:
            return f"{text} [{_signed(self.ci95[0])}, {_signed(self.ci95[1])}]"
        return f"{text} ({'1 seed' if self.paired else 'unpaired'})"

    def judgement(self) -> str:
        """What the difference amounts to, in words."""
        if not self.paired:
            return "no claim (the settings share no seed)"
        if self.ci95 is None:
            return "no claim (one seed has no interval; --seeds 3 gives one)"
        if self.distinguishable is None:
            return (f"no claim ({len(self.seeds)} seeds are too few; "
                    f"{MIN_SEEDS_FOR_A_CLAIM} or more make one)")
        return "distinguishable from zero" if self.distinguishable else \
            "not distinguishable from zero"

    def sentence(self, what: str) -> str:
        """`MixDiff − real, linear: +0.9 points (95% CI −1.2 to +3.0, 3 seeds): not
        distinguishable from zero`."""
        return f"{what}: {self.points()}: {self.judgement()}"


def _signed(fraction: float) -> str:
    """A fraction as signed points with a real minus sign: +1.2, −0.3."""
    return f"{100 * fraction:+.1f}".replace("-", "−")


def t_interval(differences: list[float], confidence: float = CONFIDENCE
               ) -> tuple[float, float] | None:
    """The Student-t interval of the mean of `differences`; None for fewer than two."""
    n = len(differences)
    if n < 2:
        return None
    mean = statistics.fmean(differences)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * statistics.stdev(differences) / \
        math.sqrt(n)
    return mean - half, mean + half


def paired_difference(values: dict[int, float], baseline: dict[int, float]) -> Difference | None:
    """`values − baseline` over the seeds both have (seed -> accuracy); where they share none, the
    difference of their means, marked unpaired. None when either side is empty."""
    if not values or not baseline:
        return None
    seeds = tuple(sorted(set(values) & set(baseline)))
    if not seeds:
        return Difference((), statistics.fmean(values.values()) -
                          statistics.fmean(baseline.values()), None, paired=False)
    differences = [values[s] - baseline[s] for s in seeds]
    return Difference(seeds, statistics.fmean(differences), t_interval(differences))


# --- settings against their baselines ------------------------------------------------------------
# the numbers compared: the offline linear probe and kNN on the in-distribution dataset, and the
# mean over the shift sets (as in id_vs_ood)
COMPARED = ("linear", "knn", "shift")
REAL_MODE = "real"


@dataclass(frozen=True)
class Comparison:
    setting: Setting
    baseline: Setting
    metric: str  # one of COMPARED
    difference: Difference

    def record(self) -> dict:
        """As results.json holds it: accuracies and intervals as fractions."""
        d = self.difference
        return {"setting": self.setting.label, "baseline": self.baseline.label,
                "method": self.setting.method, "mode": self.setting.mode, "metric": self.metric,
                "seeds": list(d.seeds), "paired": d.paired, "difference": d.difference,
                "ci95": list(d.ci95) if d.ci95 else None}


def _model_keys(setting: Setting) -> dict:
    flat = flatten(setting.runs[0].config)
    return {k: v for k, v in flat.items() if k.startswith(UNTRAINED_KEYS)}


def _differing(a: Setting, b: Setting) -> int:
    return len(differences(flatten(a.runs[0].config), flatten(b.runs[0].config), NOT_A_SETTING))


def baselines(setting: Setting, neighbours: list[Setting]) -> list[Setting]:
    """What a trained setting is measured against, among the settings evaluated on its dataset:
    the untrained encoder of its backbone, and (for a mode other than real) the real-data setting
    of its method that differs from it in the fewest config keys."""
    if setting.reference:
        return []
    found = [s for s in neighbours if s.kind == UNTRAINED and _model_keys(s) == _model_keys(setting)]
    real = [s for s in neighbours if s.kind == TRAINED and s.mode == REAL_MODE
            and s.method == setting.method and s is not setting]
    if setting.mode != REAL_MODE and real:
        found.append(min(real, key=lambda s: _differing(s, setting)))
    return found


def seed_values(setting: Setting, rows: list[ResultRow], metric: str, home: str,
                shift_of: dict[str, float]) -> dict[int, float]:
    """seed -> the metric's value for each run of the setting that has it (`shift`: the run's
    mean over the shift sets, from `shift_of`)."""
    values: dict[int, float] = {}
    for record in setting.runs:
        if metric == "shift":
            value = shift_of.get(record.name)
        else:
            weights = default_weights(record)
            found = [r.value for r in rows if r.run == record.name and r.command == metric
                     and r.evaluation == "offline" and r.weights == weights
                     and evaluated_on(r) == home]
            value = found[0] if found else None
        if value is not None and record.seed is not None:
            values[record.seed] = value
    return values


def setting_comparisons(settings: list[Setting], rows: list[ResultRow], homes: dict[str, str],
                        shift_of: dict[str, float]) -> list[Comparison]:
    """Every trained setting against its baselines (see `baselines`), on each of COMPARED both
    have, paired by seed. `homes`: setting label -> the in-distribution dataset it is evaluated
    on; `shift_of`: run name -> its shift mean."""
    comparisons = []
    for setting in settings:
        home = homes[setting.label]
        neighbours = [s for s in settings if homes[s.label] == home]
        for baseline in baselines(setting, neighbours):
            for metric in COMPARED:
                difference = paired_difference(
                    seed_values(setting, rows, metric, home, shift_of),
                    seed_values(baseline, rows, metric, home, shift_of))
                if difference is not None:
                    comparisons.append(Comparison(setting, baseline, metric, difference))
    return comparisons
