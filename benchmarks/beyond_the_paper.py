"""The "Beyond the paper" table: every variant of a quickstart --out against its real runs.

Each run `<method>-<mode><suffix>-s<seed>` of OUT/runs (the quickstart names a twin mode's run by
what sets it apart: -st<strengths>, -w<lambda>, -min<similarity>) is a variant; its differences
from `<method>-real-s<seed>` on the linear probe, kNN and the corruptions' mean are paired by seed
with their 95% t-interval, as the quickstart's verdict computes them. Beside each: the time per
training step relative to the real run of the same seed (the median epoch's seconds, a ratio
measured on one machine; noisy when something else ran beside it).

    python benchmarks/beyond_the_paper.py --out quickstart-out [--json table.json] [--by-corruption]

--by-corruption adds each variant's difference from real under each corruption alone, paired the
same way: the mean hides corruptions that move in opposite directions.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from mixdiff.evaluate.results import read_result
from mixdiff.quickstart import COMPARED, REAL, UNTRAINED, untrained_name
from mixdiff.report.compare import paired_difference
from mixdiff.runs import Metric, RunDir

RUN_NAME = re.compile(r"^(?P<method>[a-z_]+)-(?P<variant>.+)-s(?P<seed>\d+)$")


Runs = dict[tuple[str, str], dict[int, RunDir]]  # (method, variant) -> seed -> run


def _result(run: RunDir, metric: str) -> dict | None:
    command, name = COMPARED[metric]
    path = run.eval_result(command, name)
    return read_result(path) if path.is_file() else None


def _value(run: RunDir, metric: str) -> float | None:
    result = _result(run, metric)
    return result["value"] if result else None


def _median_epoch_seconds(run: RunDir) -> float | None:
    with open(run.metrics, newline="") as handle:
        seconds = [float(row[Metric.EPOCH_SECONDS]) for row in csv.DictReader(handle)
                   if row.get(Metric.EPOCH_SECONDS)]
    return statistics.median(seconds) if seconds else None


def find_runs(out: Path) -> Runs:
    """The trained runs of OUT/runs by (method, variant) and seed."""
    runs: Runs = defaultdict(dict)
    for folder in sorted((out / "runs").iterdir()):
        match = RUN_NAME.match(folder.name)
        if match and match["method"] != UNTRAINED:
            runs[match["method"], match["variant"]][int(match["seed"])] = RunDir(folder)
    return runs


def table(runs: Runs, out: Path) -> list[dict]:
    rows = []
    for (method, variant), by_seed in sorted(runs.items(), key=lambda kv: kv[0][1] != REAL):
        real = runs.get((method, REAL), {})
        # the seeds evaluated so far (a run still training has no result yet)
        by_seed = {seed: run for seed, run in by_seed.items()
                   if all(_value(run, metric) is not None for metric in COMPARED)}
        if not by_seed:
            continue
        row = {"method": method, "variant": variant, "seeds": sorted(by_seed)}
        for metric in COMPARED:
            values = {seed: v for seed, run in by_seed.items()
                      if (v := _value(run, metric)) is not None}
            row[metric] = statistics.fmean(values.values()) if values else None
            for baseline, runs_of in ((UNTRAINED, {s: RunDir(out / "runs" / untrained_name(s))
                                                   for s in values}), (REAL, real)):
                base = {seed: v for seed, run in runs_of.items()
                        if (v := _value(run, metric)) is not None}
                d = paired_difference(values, base) if variant != baseline else None
                row[f"{metric}_vs_{baseline}"] = None if d is None else {
                    "seeds": list(d.seeds), "difference": d.difference,
                    "ci95": list(d.ci95) if d.ci95 else None, "text": d.bracket(),
                    "distinguishable": d.distinguishable}
        ratios = [mine / theirs for seed, run in by_seed.items() if seed in real
                  and (mine := _median_epoch_seconds(run)) and
                  (theirs := _median_epoch_seconds(real[seed]))]
        row["time_per_step_vs_real"] = statistics.fmean(ratios) if ratios else None
        rows.append(row)
    return rows


def untrained_row(out: Path, seeds: set[int]) -> dict:
    """The untrained encoders of these seeds: the reference every trained row's gain is over."""
    row: dict = {"variant": UNTRAINED, "seeds": sorted(seeds)}
    for metric in COMPARED:
        values = [v for seed in seeds
                  if (v := _value(RunDir(out / "runs" / untrained_name(seed)), metric)) is not None]
        row[metric] = statistics.fmean(values) if values else None
    return row


def _by_corruption(run: RunDir) -> dict[str, float]:
    result = _result(run, "shift")
    return result["details"]["mean_by_corruption"] if result else {}


def corruption_rows(rows: list[dict], runs: Runs) -> list[dict]:
    """Per variant and corruption: the difference from real, paired by seed."""
    found = []
    for row in rows:
        if row["variant"] == REAL:
            continue
        mine = {s: _by_corruption(runs[row["method"], row["variant"]][s]) for s in row["seeds"]}
        real = {s: _by_corruption(run) for s, run in runs.get((row["method"], REAL), {}).items()}
        for corruption in sorted({c for values in mine.values() for c in values}):
            d = paired_difference({s: v[corruption] for s, v in mine.items() if corruption in v},
                                  {s: v[corruption] for s, v in real.items() if corruption in v})
            if d is not None:
                found.append({"variant": row["variant"], "corruption": corruption,
                              "text": d.bracket(), "distinguishable": d.distinguishable})
    return found


def markdown(rows: list[dict], untrained: dict) -> str:
    """Each variant's mean over its seeds with, in brackets, its gain over the untrained encoder
    of the same seeds; then its difference from real, paired by seed, with the 95% interval (in
    bold where it is distinguishable from zero)."""
    lines = ["| run (SimCLR) | seeds | linear | kNN | 6 corruptions | linear − real | kNN − real "
             "| corruptions − real | time per step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             "| untrained | " + str(len(untrained["seeds"])) + " | " + " | ".join(
                 f"{100 * untrained[m]:.1f}" if untrained[m] is not None else "–"
                 for m in COMPARED) + " | | | | |"]
    for row in rows:
        cells = [row["variant"], str(len(row["seeds"]))]
        for m in COMPARED:
            gain = row[f"{m}_vs_{UNTRAINED}"]
            cells.append("–" if row[m] is None else f"{100 * row[m]:.1f}" + (
                f" ({100 * gain['difference']:+.1f})" if gain else ""))
        for m in COMPARED:
            d = row[f"{m}_vs_{REAL}"] or {}
            # bold: distinguishable from zero (3 or more seeds, the interval excludes it)
            cells.append(f"**{d['text']}**" if d.get("distinguishable") else d.get("text", ""))
        ratio = row["time_per_step_vs_real"]
        cells.append(f"{ratio:.2f}x" if ratio else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a quickstart's --out")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--by-corruption", action="store_true",
                        help="also each variant − real under each corruption")
    args = parser.parse_args()
    runs = find_runs(args.out)
    rows = table(runs, args.out)
    untrained = untrained_row(args.out, {seed for row in rows for seed in row["seeds"]})
    print(markdown(rows, untrained))
    if args.by_corruption:
        print()
        for row in corruption_rows(rows, runs):
            mark = " (interval excludes zero)" if row["distinguishable"] else ""
            print(f"{row['variant']:>24} − real, {row['corruption']:<17} {row['text']}{mark}")
    if args.json:
        args.json.write_text(json.dumps({"untrained": untrained, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
