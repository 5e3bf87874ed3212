"""How often the quickstart's 95% intervals contain the truth, at full size: per-image correctness
of two settings simulated where the truth is known (mixdiff.report.coverage.Scenario), 4,000
experiments per row on 10,000 test images (Fashion-MNIST's test split), at 3 and at 10 seeds; the
two-level interval (seeds and test images, the verdict's) beside the paired t-interval over seeds.

  python benchmarks/interval_coverage.py --json docs/results/interval_coverage.json   # ~80 s

Scenarios (logits; see Scenario): `default` about +1 point with images that favour one setting
or the other (image_sd 1) and a seed spread (seed_sd 0.1); `images` only the images' part
(seed_sd 0, image_sd 2); `seeds` mostly the seeds' part (seed_sd 0.2, image_sd 0.3);
`no effect` the default with a zero effect.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from mixdiff.report.coverage import Scenario, simulate_coverage

SCENARIOS = {"default": Scenario(), "images": Scenario(seed_sd=0.0, image_sd=2.0),
             "seeds": Scenario(seed_sd=0.2, image_sd=0.3), "no effect": Scenario(effect=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--experiments", type=int, default=4000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--json", type=Path, help="Write every row here.")
    args = parser.parse_args()
    rows = []
    print(f"{'scenario':<10} {'seeds':>5} {'truth':>7} {'two-level':>9} {'t over seeds':>12} "
          f"{'half-width (points): two-level':>31} {'t':>6}")
    for name, scenario in SCENARIOS.items():
        scenario = replace(scenario, images=args.images)
        for seeds in args.seeds:
            began = time.perf_counter()
            found = simulate_coverage(scenario, seeds, args.experiments)
            rows.append({"scenario": name, **asdict(scenario), **found.record(),
                         "seconds": round(time.perf_counter() - began, 1)})
            print(f"{name:<10} {seeds:>5} {100 * found.truth:>+7.2f} {found.two_level:>9.3f} "
                  f"{found.seeds_t:>12.3f} {100 * found.two_level_half_width:>31.2f} "
                  f"{100 * found.seeds_t_half_width:>6.2f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"experiments": args.experiments, "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
