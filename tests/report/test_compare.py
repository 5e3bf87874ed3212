"""Differences paired by seed and their 95% t-interval, on fixture numbers."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from scipy import stats

from mixdiff.report.compare import (DIFFERENCE, EQUIVALENT, UNDECIDED, Difference,
                                    correct_for_many, paired_difference, t_interval)

MIXDIFF = {0: 0.752, 1: 0.741, 2: 0.768}
REAL = {0: 0.744, 1: 0.739, 2: 0.751}


def test_the_difference_is_the_mean_of_each_seeds_difference():
    d = paired_difference(MIXDIFF, REAL)
    assert d.seeds == (0, 1, 2) and d.paired
    assert d.difference == pytest.approx(statistics.fmean([0.008, 0.002, 0.017]))
    # pairing is by seed, not by position: the same numbers in another order give the same
    shuffled = paired_difference(dict(reversed(list(MIXDIFF.items()))), REAL)
    assert shuffled.difference == pytest.approx(d.difference)


def test_the_interval_is_scipys_one_sample_t_interval():
    d = paired_difference(MIXDIFF, REAL)
    reference = stats.ttest_1samp([MIXDIFF[s] - REAL[s] for s in (0, 1, 2)], 0.0) \
        .confidence_interval(0.95)
    assert d.ci95 == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert t_interval([0.01, 0.03]) == pytest.approx(tuple(
        stats.ttest_1samp([0.01, 0.03], 0.0).confidence_interval(0.95)), abs=1e-12)


def test_only_shared_seeds_are_paired_and_one_seed_has_no_interval():
    d = paired_difference({0: 0.80, 1: 0.70, 5: 0.10}, {1: 0.60, 2: 0.50})
    assert d.seeds == (1,) and d.difference == pytest.approx(0.10)
    assert d.ci95 is None and d.distinguishable is None
    assert "no claim" in d.judgement() and d.bracket() == "+10.0 (1 seed)"
    unpaired = paired_difference({0: 0.8}, {3: 0.7})
    assert not unpaired.paired and unpaired.seeds == () and unpaired.ci95 is None
    assert unpaired.difference == pytest.approx(0.1) and "share no seed" in unpaired.judgement()
    assert paired_difference({}, REAL) is None


def test_a_difference_says_whether_it_is_beyond_the_noise():
    clear = paired_difference({0: 0.80, 1: 0.81, 2: 0.82}, {0: 0.70, 1: 0.70, 2: 0.71})
    assert clear.distinguishable and clear.judgement() == \
        "a difference (its interval excludes zero; one comparison, not corrected)"
    noisy = paired_difference({0: 0.80, 1: 0.70, 2: 0.76}, {0: 0.75, 1: 0.75, 2: 0.75})
    assert noisy.distinguishable is False
    assert noisy.judgement() == "undecided: not distinguishable from zero"
    below = Difference((0, 1, 2), -0.02, (-0.03, -0.01))
    assert below.distinguishable  # below zero is also beyond the noise
    # two seeds give an interval but no claim: here both seeds differ by exactly 0.4 points,
    # a zero-width interval that would otherwise read as certainty
    two = paired_difference({0: 0.800, 1: 0.804}, {0: 0.796, 1: 0.800})
    assert two.ci95 == pytest.approx((0.004, 0.004)) and two.distinguishable is None
    assert two.judgement() == "no claim (2 seeds are too few; 3 or more make one)"
    sentence = Difference((0, 1, 2), 0.009, (-0.012, 0.030)).sentence("MixDiff − real, linear")
    assert sentence == ("MixDiff − real, linear: +0.9 points (95% CI −1.2 to +3.0, 3 seeds): "
                        "undecided: not distinguishable from zero")


def _scores(seeds, images, accuracy, rng):
    return {s: (rng.random(images) < accuracy).astype(float) for s in seeds}


def test_only_differences_that_survive_holm_are_called_differences():
    # three comparisons that each exclude zero on their own: Holm keeps the clearest only
    found = [Difference((0, 1, 2), 0.01, (0.01 - h, 0.01 + h))
             for h in (0.004, 0.0085, 0.0095)]  # each excludes zero on its own
    assert [d.p_value < 0.05 for d in found] == [True, True, True]
    corrected = correct_for_many(found)
    ps = sorted(d.p_value for d in found)
    expected = [ps[0] <= 0.05 / 3, ps[0] <= 0.05 / 3 and ps[1] <= 0.05 / 2,
                ps[0] <= 0.05 / 3 and ps[1] <= 0.05 / 2 and ps[2] <= 0.05]
    assert [d.holm for d in corrected] == expected == [True, False, False]
    assert [d.category for d in corrected] == [DIFFERENCE, UNDECIDED, UNDECIDED]
    assert all(d.family == 3 for d in corrected)
    assert "survives Holm's correction over 3 comparisons" in corrected[0].judgement()
    assert "excludes zero, but not after Holm's correction over 3" in corrected[1].judgement()
    # fewer than 3 seeds make no claim, and are not counted in the family
    few = correct_for_many(found + [Difference((0, 1), 0.5, (0.4, 0.6))])
    assert few[-1].holm is None and few[0].family == 3


def test_per_image_scores_give_the_two_level_interval_and_its_verdicts():
    rng = np.random.default_rng(0)
    seeds = (0, 1, 2, 3, 4)
    a, b = _scores(seeds, 4000, 0.80, rng), _scores(seeds, 4000, 0.80, rng)
    values = {s: a[s].mean() for s in seeds}
    base = {s: b[s].mean() for s in seeds}
    d = paired_difference(values, base, a, b, margin=0.03)
    assert d.two_level is not None and d.interval == d.two_level.ci != d.ci95
    assert d.difference == pytest.approx(np.mean([a[s] - b[s] for s in seeds]))
    assert d.category == EQUIVALENT and "no difference larger than 3 points" in d.judgement()
    tight = paired_difference(values, base, a, b, margin=0.001)
    assert tight.category == UNDECIDED
    assert f"±0.1 points would take {tight.seeds_needed} seeds" in tight.judgement() or \
        "no number of seeds" in tight.judgement()
    record = tight.record()
    assert record["ci95"] == list(tight.ci95) and record["ci95_two_level"] == list(tight.interval)
    assert record["mde80"] == pytest.approx(tight.two_level.mde()) and record["images"] == 4000
    assert record["equivalent"] is False and record["holm"] is False
    assert record["verdict"] == UNDECIDED
    # scores of a seed missing on one side: the seeds' interval only
    partial = paired_difference(values, base, a, {0: b[0]})
    assert partial.two_level is None and partial.interval == partial.ci95
