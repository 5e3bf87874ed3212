"""How sure a paired difference is: both of its sources of noise, the minimum effect it could
have detected, how many seeds a given precision would take, and Holm's correction over many.

Two settings scored on the same test images, seed by seed, give a matrix D[s, i]: setting A's
score on image i with seed s minus setting B's (a score is 1 or 0, or a mean over corruptions).
Its mean estimates the difference the settings would show over the population of training seeds
and of test images. Two draws move it: which seeds were trained, and which images make the test
set. The test images are shared by every seed, so more seeds never average their part away; a
t-interval over the per-seed means sees the seeds' part and only the within-seed share of the
images'.

The crossed random-effects model D[s, i] = δ + u_s + g_i + e_si (a seed's effect, an image's
effect, and the rest) gives Var(mean D) = σu²/n + σg²/N + σe²/(nN) for n seeds and N images. The
two-way analysis of variance without replication has E[MS_seed] = σe² + Nσu², E[MS_image] =
σe² + nσg² and E[MS_residual] = σe² (Searle, Casella & McCulloch, *Variance Components*, 1992).
MS_seed / (nN) is the paired t-interval's own variance (the spread of the per-seed means, over
n): it holds the seeds' part and the residual's. What it lacks is the images' shared part,
σg²/N, estimated as (MS_image − MS_residual) / (nN), floored at zero. Each part is uncertain in
its own way, the seeds' with n − 1 degrees of freedom, the images' with N − 1, so each gets its
own t quantile and the two half-widths add in quadrature:

    half = √[(t(n−1) · √(MS_seed / nN))² + (t(N−1) · √(max(0, MS_image − MS_residual) / nN))²]

It is never narrower than the t-interval. Two tidier rules covered less than 95% at 3 seeds in
simulation: one t with Satterthwaite's degrees of freedom for the sum (92%: its degrees of
freedom come out large exactly when MS_seed is small by chance), and a seeds' part without the
residual, σu² floored at zero (92%: with two degrees of freedom MS_seed falls below MS_residual
a third of the time, and the seeds' part then vanishes).
`tests/report/test_inference.py` checks it against a hand computation, and its coverage by
simulation (`simulate_coverage`; at full size: benchmarks/interval_coverage.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
POWER = 0.80  # of the minimum detectable effect
FAMILY_ALPHA = 0.05  # Holm's family-wise error rate
MOST_SEEDS = 1000  # seeds_for searches no further


@dataclass(frozen=True)
class MeanSquares:
    """The two-way ANOVA of D (n seeds x N images, one observation per cell)."""

    seed: float
    image: float
    residual: float
    seeds: int
    images: int

    @classmethod
    def of(cls, d: np.ndarray) -> "MeanSquares":
        d = np.asarray(d, dtype=np.float64)
        n, big_n = d.shape
        grand = d.mean()
        by_seed, by_image = d.mean(axis=1), d.mean(axis=0)
        residual = d - by_seed[:, None] - by_image[None, :] + grand
        return cls(seed=big_n * ((by_seed - grand) ** 2).sum() / (n - 1),
                   image=n * ((by_image - grand) ** 2).sum() / (big_n - 1),
                   residual=(residual ** 2).sum() / ((n - 1) * (big_n - 1)),
                   seeds=n, images=big_n)

    @property
    def components(self) -> "Components":
        """σu², σg², σe², each estimated from the mean squares and floored at zero."""
        return Components(seed=max(0.0, (self.seed - self.residual) / self.images),
                          image=max(0.0, self.image - self.residual) / self.seeds,
                          residual=self.residual)


@dataclass(frozen=True)
class Components:
    """The variance components of D (fractions squared)."""

    seed: float  # σu²: how much the difference moves from one training seed to another
    image: float  # σg²: how much it differs from one test image to another, on average
    residual: float  # σe²: the rest (a single prediction's coin flip, mostly)


def _t(quantile: float, df: float) -> float:
    return float(stats.norm.ppf(quantile) if math.isinf(df) else stats.t.ppf(quantile, df))


@dataclass(frozen=True)
class TwoLevel:
    """A paired difference with both sources of noise counted (see the module's text)."""

    difference: float  # mean of D: a fraction
    seeds_variance: float  # MS_seed / nN: the t-interval's variance (seeds and residual)
    images_variance: float  # max(0, MS_image − MS_residual) / nN: the test images' shared part
    seeds: int
    images: int
    components: Components
    confidence: float = CONFIDENCE

    @property
    def se(self) -> float:
        return math.sqrt(self.seeds_variance + self.images_variance)

    def half_width(self, quantile: float) -> float:
        """Each part at its own t quantile, added in quadrature."""
        return math.hypot(_t(quantile, self.seeds - 1) * math.sqrt(self.seeds_variance),
                          _t(quantile, self.images - 1) * math.sqrt(self.images_variance))

    @property
    def ci(self) -> tuple[float, float]:
        half = self.half_width((1 + self.confidence) / 2)
        return self.difference - half, self.difference + half

    @property
    def p_value(self) -> float:
        """Two-sided, against no difference: the level at which the interval touches zero."""
        if self.se == 0:
            return 0.0 if self.difference else 1.0
        gap = abs(self.difference)
        if self.half_width(1 - 1e-15 / 2) <= gap:
            return 0.0
        return float(optimize.brentq(lambda a: self.half_width(1 - a / 2) - gap, 1e-15, 1.0))

    def mde(self, power: float = POWER) -> float:
        """The smallest true difference this many seeds and images would detect (its interval
        excluding zero) with probability `power`, at the same noise."""
        return self.half_width((1 + self.confidence) / 2) + self.half_width(power)

    def seeds_for(self, half_width: float, most: int = MOST_SEEDS) -> int | None:
        """The fewest seeds, on the same test images, whose interval's expected half-width is at
        most `half_width`; None when no number of seeds would do (the test images' own part is
        wider: more test images would)."""
        parts, quantile = self.components, (1 + self.confidence) / 2
        images_part = _t(quantile, self.images - 1) * math.sqrt(parts.image / self.images)
        if images_part >= half_width:
            return None
        for seeds in range(2, most + 1):
            seeds_part = _t(quantile, seeds - 1) * math.sqrt(
                parts.seed / seeds + parts.residual / (seeds * self.images))
            if math.hypot(seeds_part, images_part) <= half_width:
                return seeds
        return None

    def within(self, margin: float) -> bool:
        """Whether the whole interval lies inside ±margin: no difference larger than it."""
        low, high = self.ci
        return -margin < low and high < margin


def two_level(d: np.ndarray, confidence: float = CONFIDENCE) -> TwoLevel | None:
    """The difference of D (seeds x images) with its interval; None with one seed (the seeds'
    part cannot be told) or one image."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2:
        return None
    squares = MeanSquares.of(d)
    cells = squares.seeds * squares.images
    return TwoLevel(difference=float(d.mean()), seeds_variance=squares.seed / cells,
                    images_variance=max(0.0, squares.image - squares.residual) / cells,
                    seeds=squares.seeds, images=squares.images,
                    components=squares.components, confidence=confidence)


def holm(p_values: Sequence[float], alpha: float = FAMILY_ALPHA) -> list[bool]:
    """Holm's step-down: which hypotheses are rejected with the family-wise error rate at
    `alpha`. The k-th smallest p-value (from 0) is compared with alpha / (m − k); the first that
    fails stops the rejections."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected
