"""How often the intervals of `report.inference` contain the truth, by simulation where the
truth is known: per-image correctness of two settings over seeds, with a set effect, a seed
spread and an image spread. The tests run it small; benchmarks/interval_coverage.py full size."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import expit

from mixdiff.report.compare import t_interval
from mixdiff.report.inference import two_level


@dataclass(frozen=True)
class Scenario:
    """Setting A's and B's chance of getting image i right with seed s, on the logit scale:
    a_i + c_s ± (b_i + u_s) / 2, each then drawn as a coin flip.

    a_i ~ N(difficulty, difficulty_sd): how easy the image is for both (so that their flips agree
    more than by chance, as two encoders' do); c_s ~ N(0, shared_seed_sd): what a seed does to
    both (the pairing cancels most of it); b_i ~ N(effect, image_sd): how much more A gets image i
    right than B (images one setting favours); u_s ~ N(0, seed_sd): what a seed does to the
    difference. The truth is the difference of the chances, averaged over all seeds and images,
    computed by a large Monte Carlo sum (`truth`)."""

    effect: float = 0.1  # logits: about +1 point of accuracy at the default difficulty
    image_sd: float = 1.0
    seed_sd: float = 0.1
    difficulty: float = 2.5  # logits: about 85% right on average
    difficulty_sd: float = 2.0
    shared_seed_sd: float = 0.1
    images: int = 2000

    def _chances(self, a, b, u, c) -> tuple[np.ndarray, np.ndarray]:
        return expit(a + c + (b + u) / 2), expit(a + c - (b + u) / 2)

    def truth(self, draws: int = 4_000_000) -> float:
        """The population difference (its Monte Carlo error is about 1e-4 at 4M draws)."""
        rng = np.random.default_rng(12345)
        p_a, p_b = self._chances(rng.normal(self.difficulty, self.difficulty_sd, draws),
                                 rng.normal(self.effect, self.image_sd, draws),
                                 rng.normal(0, self.seed_sd, draws),
                                 rng.normal(0, self.shared_seed_sd, draws))
        return float((p_a - p_b).mean())

    def draw(self, seeds: int, rng: np.random.Generator) -> np.ndarray:
        """One experiment's D (seeds x images): A's correctness minus B's on a fresh test set."""
        a = rng.normal(self.difficulty, self.difficulty_sd, self.images)
        b = rng.normal(self.effect, self.image_sd, self.images)
        u = rng.normal(0, self.seed_sd, seeds)[:, None]
        c = rng.normal(0, self.shared_seed_sd, seeds)[:, None]
        p_a, p_b = self._chances(a, b, u, c)
        flips = rng.random((2, seeds, self.images))
        return (flips[0] < p_a).astype(np.int8) - (flips[1] < p_b).astype(np.int8)


@dataclass(frozen=True)
class Coverage:
    seeds: int
    experiments: int
    truth: float
    two_level: float  # share of experiments whose two-level 95% interval holds the truth
    seeds_t: float  # the same for the paired t-interval over the per-seed means
    two_level_half_width: float  # median, a fraction
    seeds_t_half_width: float

    def record(self) -> dict:
        return asdict(self)


def simulate_coverage(scenario: Scenario, seeds: int, experiments: int, seed: int = 0
                      ) -> Coverage:
    truth = scenario.truth()
    rng = np.random.default_rng(seed)
    hits, t_hits, widths, t_widths = 0, 0, [], []
    for _ in range(experiments):
        d = scenario.draw(seeds, rng)
        low, high = two_level(d).ci
        hits += low <= truth <= high
        widths.append((high - low) / 2)
        t_low, t_high = t_interval(d.mean(axis=1).tolist())
        t_hits += t_low <= truth <= t_high
        t_widths.append((t_high - t_low) / 2)
    return Coverage(seeds, experiments, truth, hits / experiments, t_hits / experiments,
                    float(np.median(widths)), float(np.median(t_widths)))
