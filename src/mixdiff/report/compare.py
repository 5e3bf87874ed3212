"""Differences between two settings, paired by seed, with their 95% interval and what they
amount to.

Runs of two settings that share a seed share their initialisation and their data order, so the
difference of their accuracies on that seed cancels most of what the seed decides. Where both
kept their per-image predictions on the same test images, the interval counts the test images'
noise as well as the seeds' (`mixdiff.report.inference`); `ci95` stays the paired t-interval
over the seeds, for comparison. Among many comparisons only those that survive Holm's correction
are called differences; one whose whole interval lies within ±`margin` (1 point) is called
equivalent; the rest are undecided, with the seeds that ±`margin` would take. Accuracies are
fractions, like every number in results.json; the text says them in points (percent).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

from mixdiff.config import flatten
from mixdiff.errors import RunDirError
from mixdiff.evaluate.predictions import per_image_scores, predictions_of
from mixdiff.report.collect import TRAINED, UNTRAINED
from mixdiff.report.inference import FAMILY_ALPHA, TwoLevel, holm, two_level
from mixdiff.report.results import ResultRow, default_weights, evaluated_on
from mixdiff.report.grouping import NOT_A_SETTING, UNTRAINED_KEYS, Setting
from mixdiff.schema import differences

CONFIDENCE = 0.95
EQUIVALENCE_MARGIN = 0.01  # "no difference larger than 1 point" (`--equivalence`)


# Fewer seeds give an interval but no claim: with two, the t-interval has one degree of freedom
# (t = 12.7), and two accuracies on a thousand test images often differ by exactly the same
# tenth of a point, a sample spread of zero that would pass for certainty.
MIN_SEEDS_FOR_A_CLAIM = 3

DIFFERENCE, EQUIVALENT, UNDECIDED, NO_CLAIM = "difference", "equivalent", "undecided", "no claim"


@dataclass(frozen=True)
class Difference:
    """`value − baseline`, the mean over the seeds both have."""

    seeds: tuple[int, ...]
    difference: float  # a fraction (0.012 = +1.2 points)
    ci95: tuple[float, float] | None  # the paired t-interval over seeds; None with a single seed
    paired: bool = True  # False: the settings share no seed; a difference of means, no interval
    two_level: TwoLevel | None = None  # seeds and test images (None: no per-image predictions)
    holm: bool | None = None  # survives Holm's correction in its family (None: not corrected)
    family: int = 1  # the comparisons Holm's correction counted
    margin: float = EQUIVALENCE_MARGIN

    @property
    def interval(self) -> tuple[float, float] | None:
        """The interval the verdict uses: both sources of noise where known, else the seeds'."""
        return self.two_level.ci if self.two_level is not None else self.ci95

    @property
    def claimable(self) -> bool:
        return self.paired and self.interval is not None and \
            len(self.seeds) >= MIN_SEEDS_FOR_A_CLAIM

    @property
    def p_value(self) -> float | None:
        if not self.claimable:
            return None
        if self.two_level is not None:
            return self.two_level.p_value
        low, high = self.ci95  # the t-interval's own p-value, from its half-width
        half = (high - low) / 2
        if half == 0:
            return 0.0 if self.difference else 1.0
        t = abs(self.difference) / (half / stats.t.ppf((1 + CONFIDENCE) / 2, len(self.seeds) - 1))
        return float(2 * stats.t.sf(t, len(self.seeds) - 1))

    @property
    def distinguishable(self) -> bool | None:
        """Whether it is a difference: its interval excludes zero and, in a family of
        comparisons, it survives Holm's correction. None where no claim can be made."""
        if not self.claimable:
            return None
        if self.holm is not None:
            return self.holm
        low, high = self.interval
        return low > 0 or high < 0

    @property
    def equivalent(self) -> bool | None:
        """Whether the whole interval lies within ±margin (None: no claim can be made)."""
        if not self.claimable:
            return None
        low, high = self.interval
        return -self.margin < low and high < self.margin

    @property
    def mde80(self) -> float | None:
        """The smallest difference these seeds and images detect with 80% power (a fraction)."""
        return self.two_level.mde() if self.two_level is not None else None

    @property
    def seeds_needed(self) -> int | None:
        """Seeds whose interval would be ±margin wide (None: none would; or unknown)."""
        return self.two_level.seeds_for(self.margin) if self.two_level is not None else None

    @property
    def category(self) -> str:
        if not self.claimable:
            return NO_CLAIM
        return DIFFERENCE if self.distinguishable else EQUIVALENT if self.equivalent else \
            UNDECIDED

    def points(self) -> str:
        """`+0.9 points (95% CI −1.2 to +3.0, 3 seeds)`; `+0.9 points (1 seed)`."""
        n = len(self.seeds)
        if not self.paired:
            return f"{_signed(self.difference)} points (unpaired: no seed shared)"
        if self.interval is None:
            return f"{_signed(self.difference)} points ({n} seed)"
        low, high = self.interval
        what = ", seeds and test images" if self.two_level is not None else ""
        return (f"{_signed(self.difference)} points (95% CI {_signed(low)} to {_signed(high)}, "
                f"{n} seeds{what})")

    def bracket(self) -> str:
        """The compact form for tables: `+1.2 [−0.3, +2.7]`, `+1.2 (1 seed)`, `+1.2 (unpaired)`."""
        text = _signed(self.difference)
        if self.interval is not None:
            low, high = self.interval
            return f"{text} [{_signed(low)}, {_signed(high)}]"
        return f"{text} ({'1 seed' if self.paired else 'unpaired'})"

    def judgement(self) -> str:
        """What the difference amounts to, in words."""
        if not self.paired:
            return "no claim (the settings share no seed)"
        if self.interval is None:
            return "no claim (one seed has no interval; --seeds 3 gives one)"
        if not self.claimable:
            return (f"no claim ({len(self.seeds)} seeds are too few; "
                    f"{MIN_SEEDS_FOR_A_CLAIM} or more make one)")
        corrected = f"Holm's correction over {self.family} comparisons" if self.holm is not None \
            else "no correction"
        margin = f"{100 * self.margin:g} point{'s' if self.margin != 0.01 else ''}"
        if self.category == DIFFERENCE:
            return f"a difference (it survives {corrected})" if self.holm is not None else \
                "a difference (its interval excludes zero; one comparison, not corrected)"
        if self.category == EQUIVALENT:
            return f"no difference larger than {margin}"
        low, high = self.interval
        why = "excludes zero, but not after " + corrected if (low > 0 or high < 0) else \
            "not distinguishable from zero"
        if self.two_level is None:
            return f"undecided: {why}"
        seeds = self.seeds_needed
        need = f"±{margin} would take {seeds} seeds" if seeds else \
            f"no number of seeds gives ±{margin} on these test images"
        return (f"undecided: {why}, nor shown within ±{margin} (80% power for "
                f"{100 * self.mde80:.1f} points; {need})")

    def sentence(self, what: str) -> str:
        """`MixDiff − real, linear: +0.9 points (95% CI −1.2 to +3.0, 3 seeds): undecided...`."""
        return f"{what}: {self.points()}: {self.judgement()}"

    def record(self) -> dict:
        """The fields results.json and quickstart.json hold (accuracies as fractions)."""
        tl = self.two_level
        return {"seeds": list(self.seeds), "paired": self.paired, "difference": self.difference,
                "ci95": list(self.ci95) if self.ci95 else None,
                "ci95_two_level": list(tl.ci) if tl is not None else None,
                "images": tl.images if tl is not None else None,
                "p_value": self.p_value, "holm": bool(self.holm), "family": self.family,
                "mde80": self.mde80, "equivalence_margin": self.margin,
                "equivalent": bool(self.equivalent), "seeds_needed": self.seeds_needed,
                "verdict": self.category}


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


Scores = dict[int, np.ndarray]  # seed -> each test image's score (evaluate.predictions)


def paired_difference(values: dict[int, float], baseline: dict[int, float],
                      scores: Scores | None = None, baseline_scores: Scores | None = None,
                      margin: float = EQUIVALENCE_MARGIN) -> Difference | None:
    """`values − baseline` over the seeds both have (seed -> accuracy); where they share none, the
    difference of their means, marked unpaired. With each seed's per-image scores of both (on
    the same images, in the same order), the two-level interval too. None when either side is
    empty."""
    if not values or not baseline:
        return None
    seeds = tuple(sorted(set(values) & set(baseline)))
    if not seeds:
        return Difference((), statistics.fmean(values.values()) -
                          statistics.fmean(baseline.values()), None, paired=False, margin=margin)
    differences = [values[s] - baseline[s] for s in seeds]
    found = None
    if scores and baseline_scores and all(s in scores and s in baseline_scores for s in seeds):
        found = two_level(np.stack([scores[s] - baseline_scores[s] for s in seeds]))
    return Difference(seeds, statistics.fmean(differences), t_interval(differences),
                      two_level=found, margin=margin)


def correct_for_many(found: list[Difference], alpha: float = FAMILY_ALPHA) -> list[Difference]:
    """Holm's correction over the differences that can make a claim (the family): each gets
    `holm` (whether it survives) and the family's size."""
    family = [i for i, d in enumerate(found) if d.p_value is not None]
    survives = holm([found[i].p_value for i in family], alpha)
    corrected = list(found)
    for i, kept in zip(family, survives):
        corrected[i] = replace(found[i], holm=kept, family=len(family))
    return corrected


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
        return {"setting": self.setting.label, "baseline": self.baseline.label,
                "method": self.setting.method, "mode": self.setting.mode, "metric": self.metric,
                **self.difference.record()}


def _model_keys(setting: Setting) -> dict:
    flat = flatten(setting.runs[0].config)
    return {k: v for k, v in flat.items() if k.startswith(UNTRAINED_KEYS)}


def _differing(a: Setting, b: Setting) -> int:
    return len(differences(flatten(a.runs[0].config), flatten(b.runs[0].config), NOT_A_SETTING))


def baselines(setting: Setting, neighbours: list[Setting]) -> list[Setting]:
    """What a trained setting is measured against, among the settings evaluated on its dataset:
    the untrained encoder of its backbone, and (for a mode other than real) the real-data setting
    of its method that differs from it in the fewest config keys."""
    if setting.kind != TRAINED:  # references, and external encoders (no seeds of their own)
        return []
    found = [s for s in neighbours if s.kind == UNTRAINED and _model_keys(s) == _model_keys(setting)]
    real = [s for s in neighbours if s.kind == TRAINED and s.mode == REAL_MODE
            and s.method == setting.method and s is not setting]
    if setting.mode != REAL_MODE and real:
        found.append(min(real, key=lambda s: _differing(s, setting)))
    return found


def _offline_row(rows: list[ResultRow], record, metric: str, home: str) -> ResultRow | None:
    """The run's offline result on `metric` (linear or knn) on its home dataset, with its
    default weights."""
    weights = default_weights(record)
    found = [r for r in rows if r.run == record.name and r.command == metric
             and r.evaluation == "offline" and r.weights == weights and evaluated_on(r) == home]
    return found[0] if found else None


def _by_seed(setting: Setting, rows: list[ResultRow], metric: str, home: str,
             shift: dict, field: str) -> dict:
    """seed -> the `field` ("value" or "source") of the metric's offline row for each run of the
    setting that has one; `shift`: from `shift` by run name (the runs' mean over the shift sets,
    or their one shift set's file)."""
    found = {}
    for record in setting.runs:
        if metric == "shift":
            got = shift.get(record.name)
        else:
            row = _offline_row(rows, record, metric, home)
            got = row and getattr(row, field)
        if got is not None and record.seed is not None:
            found[record.seed] = got
    return found


def _source(setting: Setting, rows: list[ResultRow], metric: str, home: str,
            shift_source: dict[str, str]) -> dict[int, str]:
    """seed -> the result file behind the metric's value (`shift`: the run's one shift set)."""
    return _by_seed(setting, rows, metric, home, shift_source, "source")


def seed_values(setting: Setting, rows: list[ResultRow], metric: str, home: str,
                shift_of: dict[str, float]) -> dict[int, float]:
    """seed -> the metric's value for each run of the setting that has it (`shift`: the run's
    mean over the shift sets, from `shift_of`)."""
    return _by_seed(setting, rows, metric, home, shift_of, "value")


def seed_scores(sources: dict[int, str]) -> tuple[Scores | None, str | None]:
    """seed -> per-image scores from each result file, with the fingerprint of the images they
    scored; (None, None) when a result kept no predictions or two scored other images (the
    pairing is checked, not assumed)."""
    scores, fingerprints = {}, set()
    for seed, source in sources.items():
        result = json.loads(Path(source).read_text())
        try:
            predictions = predictions_of(source, result)
        except RunDirError:
            return None, None
        fingerprints.add(result.get("images_sha256"))
        scores[seed] = per_image_scores(result, predictions)
    if len(fingerprints) != 1 or None in fingerprints:
        return None, None
    return scores, fingerprints.pop()


def setting_comparisons(settings: list[Setting], rows: list[ResultRow], homes: dict[str, str],
                        shift_of: dict[str, float], shift_source: dict[str, str] | None = None,
                        margin: float = EQUIVALENCE_MARGIN) -> list[Comparison]:
    """Every trained setting against its baselines (see `baselines`), on each of COMPARED both
    have, paired by seed, with Holm's correction over them all. `homes`: setting label -> the
    in-distribution dataset it is evaluated on; `shift_of`: run name -> its shift mean;
    `shift_source`: run name -> the result file of its one shift set (where the mean is over one
    only: its per-image predictions then give the two-level interval)."""
    shift_source = shift_source or {}
    found = []
    for setting in settings:
        home = homes[setting.label]
        neighbours = [s for s in settings if homes[s.label] == home]
        for baseline in baselines(setting, neighbours):
            for metric in COMPARED:
                scores, base_scores = (seed_scores(_source(s, rows, metric, home, shift_source))
                                       for s in (setting, baseline))
                same_images = scores[1] is not None and scores[1] == base_scores[1]
                difference = paired_difference(
                    seed_values(setting, rows, metric, home, shift_of),
                    seed_values(baseline, rows, metric, home, shift_of),
                    scores[0] if same_images else None,
                    base_scores[0] if same_images else None, margin)
                if difference is not None:
                    found.append(Comparison(setting, baseline, metric, difference))
    corrected = correct_for_many([c.difference for c in found])
    return [replace(c, difference=d) for c, d in zip(found, corrected)]
