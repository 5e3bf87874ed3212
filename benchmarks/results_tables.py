"""README's "Results" tables, from a quickstart --out: every setting against the untrained
encoder and against real, and each twin setting − real under each corruption alone.

Each run `<method>-<mode><suffix>-s<seed>` of OUT/runs is a setting (the quickstart names a twin
mode's run by what sets it apart: -st<strengths>, -w<lambda>, -min<similarity>). Its differences
from `untrained-s<seed>` and from `<method>-real-s<seed>` on the linear probe, kNN and the
corruptions' mean are paired by seed on the same test images (their fingerprints are checked),
with the interval that counts the seeds' and the test images' noise, as the quickstart's verdict
computes them; Holm's correction runs over every comparison of the main table (and, as a family
of its own, over the per-corruption ones). Each comparison is a difference (it survives Holm),
within ±margin (its whole interval), or undecided, with the minimum effect its seeds detect with
80% power and the seeds that ±margin would take. The JSON also gives each setting's time per
training step relative to the real run of the same seed (median epoch seconds: only as good as
the machine was quiet while both trained, so the tables leave it out).

    python benchmarks/results_tables.py --out quickstart-out --json docs/results/tables.json \
        --markdown docs/results/tables.md --keep docs/results/fashion-mnist

--keep copies what the tables read of each run (its config, data.json, metrics.csv, and each
result with its per-image predictions; no checkpoint) into KEEP/runs/, so that
`--out KEEP` makes the same tables from the repository alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from mixdiff.evaluate.predictions import predictions_of
from mixdiff.quickstart import COMPARED, REAL, UNTRAINED, scored, untrained_name
from mixdiff.report.compare import (EQUIVALENCE_MARGIN, Difference, correct_for_many,
                                    paired_difference)
from mixdiff.evaluate.results import result_name
from mixdiff.runs import PIXELS, Metric, RunDir

RUN_NAME = re.compile(r"^(?P<method>[a-z_]+)-(?P<variant>.+)-s(?P<seed>\d+)$")
WORDS = {"linear": "linear", "knn": "kNN", "shift": "6 corruptions"}
FLOOR = "raw pixels"  # the quickstart scores them once, in the first seed's untrained run
Runs = dict[tuple[str, str], dict[int, RunDir]]  # (method, variant) -> seed -> run


def find_runs(out: Path) -> Runs:
    """The runs of OUT/runs that hold all three results, by (method, variant) and seed."""
    runs: Runs = defaultdict(dict)
    for folder in sorted((out / "runs").iterdir()):
        match = RUN_NAME.match(folder.name)
        run = RunDir(folder)
        if match and match["method"] != UNTRAINED and all(
                run.eval_result(*COMPARED[m]).is_file() for m in COMPARED):
            runs[match["method"], match["variant"]][int(match["seed"])] = run
    return runs


def _median_epoch_seconds(run: RunDir) -> float | None:
    with open(run.metrics, newline="") as handle:
        seconds = [float(row[Metric.EPOCH_SECONDS]) for row in csv.DictReader(handle)
                   if row.get(Metric.EPOCH_SECONDS)]
    return statistics.median(seconds) if seconds else None


def _difference(mine: dict[int, RunDir], theirs: dict[int, RunDir], metric: str,
                margin: float) -> Difference:
    seeds = sorted(set(mine) & set(theirs))
    a, b = ({s: scored(runs[s], metric) for s in seeds} for runs in (mine, theirs))
    images = {f.images_sha256 for f in (*a.values(), *b.values())}
    if len(images) != 1:
        raise SystemExit(f"{metric}: the runs were scored on {len(images)} different test sets")
    return paired_difference({s: f.value for s, f in a.items()},
                             {s: f.value for s, f in b.items()},
                             {s: f.scores for s, f in a.items()},
                             {s: f.scores for s, f in b.items()}, margin)


def comparisons(runs: Runs, out: Path, margin: float) -> list[dict]:
    """Every setting against the untrained encoder and against real, Holm-corrected together."""
    keys, found = [], []
    for (method, variant), mine in sorted(runs.items(), key=lambda kv: kv[0][1] != REAL):
        untrained = {s: RunDir(out / "runs" / untrained_name(s)) for s in mine}
        against = [(UNTRAINED, untrained)]
        if variant != REAL and (method, REAL) in runs:
            against.append((REAL, runs[method, REAL]))
        for baseline, theirs in against:
            for metric in COMPARED:
                keys.append({"method": method, "variant": variant, "baseline": baseline,
                             "metric": metric})
                found.append(_difference(mine, theirs, metric, margin))
    return [{**key, "d": d} for key, d in zip(keys, correct_for_many(found))]


def _grid(run: RunDir) -> dict[str, np.ndarray]:
    """corruption -> each image's mean correctness over its severities."""
    path = run.eval_result(*COMPARED["shift"])
    result = json.loads(path.read_text())
    kept = predictions_of(path, result)
    return {name: np.mean([kept.correct_of(f"{name}/{key}") for key in severities], axis=0)
            for name, severities in result["details"]["top1_by_corruption"].items()}


def corruption_comparisons(runs: Runs, out: Path, margin: float) -> list[dict]:
    """Each twin setting − real (and untrained − real) under each corruption alone: a family of
    its own for Holm's correction (these explain the mean; they are not the headline)."""
    keys, found = [], []
    grids = {key: {s: _grid(run) for s, run in by_seed.items()} for key, by_seed in runs.items()}
    for (method, variant), mine in grids.items():
        real = grids.get((method, REAL))
        if variant == REAL or real is None:
            continue
        seeds = sorted(set(mine) & set(real))
        for corruption in mine[seeds[0]]:
            a = {s: mine[s][corruption] for s in seeds}
            b = {s: real[s][corruption] for s in seeds}
            keys.append({"method": method, "variant": variant, "corruption": corruption})
            found.append(paired_difference({s: v.mean() for s, v in a.items()},
                                           {s: v.mean() for s, v in b.items()}, a, b, margin))
    return [{**key, "d": d} for key, d in zip(keys, correct_for_many(found))]


def means(runs: Runs, out: Path) -> dict:
    """Per setting (and the untrained encoders): seeds, mean value per metric, time ratio."""
    rows = {}
    seeds_used = sorted({s for by_seed in runs.values() for s in by_seed})
    first = RunDir(out / "runs" / untrained_name(seeds_used[0]))
    pixels = {m: first.eval_result(command, result_name(name, PIXELS, "student"))
              for m, (command, name) in COMPARED.items()}
    if all(path.is_file() for path in pixels.values()):
        rows[FLOOR] = {"seeds": [], **{m: json.loads(path.read_text())["value"]
                                       for m, path in pixels.items()}}
    rows[UNTRAINED] = {"seeds": seeds_used, **{m: statistics.fmean(
        scored(RunDir(out / "runs" / untrained_name(s)), m).value for s in seeds_used)
        for m in COMPARED}}
    for (method, variant), mine in sorted(runs.items(), key=lambda kv: kv[0][1] != REAL):
        real = runs.get((method, REAL), {})
        ratios = [m / r for s, run in mine.items() if s in real
                  and (m := _median_epoch_seconds(run)) and (r := _median_epoch_seconds(real[s]))]
        rows[variant] = {"method": method, "seeds": sorted(mine),
                         **{m: statistics.fmean(scored(run, m).value for run in mine.values())
                            for m in COMPARED},
                         "time_per_step_vs_real": statistics.fmean(ratios) if ratios else None}
    return rows


def _cell(d: Difference, margin: float) -> str:
    text = d.bracket()
    if d.category == "difference":
        return f"**{text}** difference"
    if d.category == "equivalent":
        return f"{text} within ±{100 * margin:g}"
    need = f"{d.seeds_needed} seeds" if d.seeds_needed else "more test images"
    return f"{text} undecided (MDE {100 * d.mde80:.1f}; ±{100 * margin:g}: {need})"


def markdown(rows: dict, found: list[dict], by_corruption: list[dict], margin: float) -> str:
    gains = {(c["variant"], c["metric"]): c["d"] for c in found if c["baseline"] == UNTRAINED}
    versus = {(c["variant"], c["metric"]): c["d"] for c in found if c["baseline"] == REAL}
    lines = ["| encoder | seeds | " + " | ".join(WORDS[m] for m in COMPARED) + " | " +
             " | ".join(f"{WORDS[m]} − untrained" for m in COMPARED) + " |",
             "|---|---:|" + "---:|" * (2 * len(COMPARED))]
    for variant, row in rows.items():
        cells = [variant, str(len(row["seeds"]) or "–"),
                 *(f"{100 * row[m]:.1f}" for m in COMPARED)]
        cells += [_cell(gains[variant, m], margin) if (variant, m) in gains else ""
                  for m in COMPARED]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| vs real, paired by seed | " + " | ".join(WORDS[m] for m in COMPARED) + " |",
              "|---|" + "---:|" * len(COMPARED)]
    for variant in dict.fromkeys(v for v, _ in versus):
        lines.append(f"| {variant} − real | " + " | ".join(
            _cell(versus[variant, m], margin) for m in COMPARED) + " |")
    if by_corruption:
        corruptions = list(dict.fromkeys(c["corruption"] for c in by_corruption))
        per = {(c["variant"], c["corruption"]): c["d"] for c in by_corruption}
        lines += ["", "| − real, per corruption | " + " | ".join(corruptions) + " |",
                  "|---|" + "---:|" * len(corruptions)]
        for variant in dict.fromkeys(c["variant"] for c in by_corruption):
            lines.append(f"| {variant} | " + " | ".join(
                (f"**{per[variant, c].bracket()}**" if per[variant, c].category == "difference"
                 else per[variant, c].bracket()) for c in corruptions) + " |")
    return "\n".join(lines)


KEPT = ("config.yaml", "data.json", "metrics.csv", "eval/**/*.json", "eval/**/predictions.npz")


def keep(runs: Runs, out: Path, into: Path) -> int:
    """Copy what the tables read of each run, and of the untrained references, into INTO/runs."""
    names = {run.root.name for by_seed in runs.values() for run in by_seed.values()}
    names |= {untrained_name(s) for by_seed in runs.values() for s in by_seed}
    copied = 0
    for name in sorted(names):
        for pattern in KEPT:
            for source in (out / "runs" / name).glob(pattern):
                target = into / "runs" / name / source.relative_to(out / "runs" / name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                copied += 1
    return copied


def _record(found: list[dict]) -> list[dict]:
    return [{**{k: v for k, v in c.items() if k != "d"}, **c["d"].record()} for c in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a quickstart's --out")
    parser.add_argument("--equivalence", type=float, default=EQUIVALENCE_MARGIN)
    parser.add_argument("--json", type=Path, help="also write every comparison here")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--keep", type=Path, help="copy the runs' files the tables read here")
    args = parser.parse_args()
    runs = find_runs(args.out)
    found = comparisons(runs, args.out, args.equivalence)
    by_corruption = corruption_comparisons(runs, args.out, args.equivalence)
    rows = means(runs, args.out)
    text = markdown(rows, found, by_corruption, args.equivalence)
    family = next((c["d"].family for c in found if c["d"].holm is not None), 0)
    text = (f"{len(found)} comparisons (Holm's family: {family}); per corruption: "
            f"{len(by_corruption)} (a family of its own). Top-1 %, differences in points with "
            "95% intervals over seeds and test images.\n\n" + text)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"equivalence_margin": args.equivalence, "settings": rows,
                                         "comparisons": _record(found),
                                         "by_corruption": _record(by_corruption)},
                                        indent=2) + "\n")
    if args.keep:
        print(f"kept {keep(runs, args.out, args.keep)} files in {args.keep / 'runs'}")


if __name__ == "__main__":
    main()
