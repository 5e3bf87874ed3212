"""The two-level interval against a hand computation, its coverage by simulation, Holm's
correction, the minimum detectable effect and the seeds a precision needs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mixdiff.report.coverage import Scenario, simulate_coverage
from mixdiff.report.inference import holm, two_level

# 3 seeds x 4 images: setting A's correctness minus B's
D = np.array([[1, 0, 0, -1],
              [1, 1, 0, 0],
              [0, 1, -1, 0]], dtype=float)


def test_the_interval_against_a_hand_computation():
    n, big_n = 3, 4
    grand = sum(map(sum, D)) / 12  # 2/12
    seed_means = [sum(row) / 4 for row in D]  # 0, 0.5, 0
    image_means = [sum(D[s][i] for s in range(3)) / 3 for i in range(4)]
    ms_seed = big_n * sum((m - grand) ** 2 for m in seed_means) / (n - 1)
    ms_image = n * sum((m - grand) ** 2 for m in image_means) / (big_n - 1)
    ms_residual = sum((D[s][i] - seed_means[s] - image_means[i] + grand) ** 2
                      for s in range(3) for i in range(4)) / ((n - 1) * (big_n - 1))
    assert (ms_seed, ms_image, ms_residual) == pytest.approx((1 / 3, 1, 1 / 3))
    # the seeds' part is the paired t-interval's variance: the per-seed means' spread over n
    assert ms_seed / 12 == pytest.approx(np.var(seed_means, ddof=1) / 3)
    seeds_part = stats.t.ppf(0.975, 2) * math.sqrt(ms_seed / 12)
    images_part = stats.t.ppf(0.975, 3) * math.sqrt((ms_image - ms_residual) / 12)
    half = math.sqrt(seeds_part ** 2 + images_part ** 2)

    found = two_level(D)
    assert found.difference == pytest.approx(grand)
    assert found.ci == pytest.approx((grand - half, grand + half))
    assert found.components.seed == pytest.approx(0.0, abs=1e-12)  # MS_seed = MS_residual
    assert found.components.image == pytest.approx((1 - 1 / 3) / 3)
    # wider than the paired t-interval over seeds, which misses the images' shared part
    t_half = stats.t.ppf(0.975, 2) * np.std(seed_means, ddof=1) / math.sqrt(3)
    assert half > t_half


def test_one_seed_or_one_image_has_no_interval():
    assert two_level(D[:1]) is None and two_level(D[:, :1]) is None


def test_the_p_value_is_the_level_where_the_interval_touches_zero():
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.05, 0.2):
        d = (rng.random((4, 300)) < 0.5 + shift).astype(float) - (rng.random((4, 300)) < 0.5)
        found = two_level(d)
        p = found.p_value
        assert found.half_width(1 - p / 2) == pytest.approx(abs(found.difference), rel=1e-6)
        low, high = found.ci
        assert (p < 0.05) == (low > 0 or high < 0)


def test_the_minimum_detectable_effect_and_the_seeds_a_precision_needs():
    rng = np.random.default_rng(0)
    d = (rng.random((3, 2000)) < 0.85).astype(float) - (rng.random((3, 2000)) < 0.84)
    found = two_level(d)
    assert found.mde() == pytest.approx(found.half_width(0.975) + found.half_width(0.80))
    assert found.mde() > found.half_width(0.975)  # 80% power asks for more than the interval
    # the seeds that a half-width needs: enough, and one fewer is not
    target = 0.6 * found.half_width(0.975)
    seeds = found.seeds_for(target)
    assert seeds is not None and seeds > 3
    parts = found.components

    def expected_half(n: int) -> float:
        seeds_part = stats.t.ppf(0.975, n - 1) * math.sqrt(parts.seed / n +
                                                           parts.residual / (n * 2000))
        images_part = stats.t.ppf(0.975, 1999) * math.sqrt(parts.image / 2000)
        return math.hypot(seeds_part, images_part)

    assert expected_half(seeds) <= target < expected_half(seeds - 1)
    # the images' own part alone wider than asked: no number of seeds does it
    assert found.seeds_for(0.5 * stats.norm.ppf(0.975) * math.sqrt(parts.image / 2000)) is None


def test_equivalence_needs_the_whole_interval_inside_the_margin():
    found = two_level(D)
    low, high = found.ci
    assert found.within(max(-low, high) + 1e-9)
    assert not found.within(max(-low, high) - 1e-9)


def test_holm_against_a_hand_example():
    # sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, then 0.03 > 0.05/2 stops (0.04 with it)
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert holm([0.04]) == [True] and holm([]) == []
    # fifteen comparisons at p = 0.02 each: none survives (uncorrected, all would)
    assert not any(holm([0.02] * 15))


@pytest.mark.parametrize("seeds", [3, 10])
def test_the_interval_covers_the_truth_95_percent_of_the_time(seeds):
    """1,000 simulated experiments, each a fresh test set and fresh seeds (reduced from the
    benchmark's 10,000 images to 2,000; benchmarks/interval_coverage.py runs the full size)."""
    scenario = Scenario(images=2000)
    found = simulate_coverage(scenario, seeds, experiments=1000)
    assert 0.93 <= found.two_level <= 0.97, found
    if seeds == 10:  # why: the t-interval over seeds misses the test images' shared part
        assert found.seeds_t < 0.93, found
