"""`mixdiff report`: every table and figure of a set of runs, from the files they hold. What cannot
be drawn (a run without results, no synthetic roots) is skipped and said, never guessed."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mixdiff.errors import ConfigError, MixDiffError
from mixdiff.io import atomic_write_text, file_sha256
from mixdiff.report.collect import load_runs
from mixdiff.report.compare import EQUIVALENCE_MARGIN, setting_comparisons
from mixdiff.outputs import refuse_replacing
from mixdiff.report.curves import plot_curves
from mixdiff.report.figures import drawn_by
from mixdiff.report.grid import pairs_grid
from mixdiff.report.id_ood import Point, id_vs_ood_points
from mixdiff.report.markdown import render
from mixdiff.report.radar import plot_radar, radar_panels
from mixdiff.report.results import (SHIFT, SPREADS, ResultRow, result_rows, setting_home,
                                    json_text, write_csv, write_json)
from mixdiff.report.scatter import plot_id_vs_ood
from mixdiff.report.grouping import group_settings

RESULTS_MD, RESULTS_CSV, RESULTS_JSON = "results.md", "results.csv", "results.json"
ID_VS_OOD, RADAR, CURVES, PAIRS = "id_vs_ood.png", "radar.png", "curves.png", "pairs.png"
FIGURES = (ID_VS_OOD, RADAR, CURVES, PAIRS)
COMMAND = "report"
JSON_KEYS = {"spread", "runs", "settings", "rows"}  # what every results.json holds
# results.json's record of the sha256 of results.md, results.csv and itself (over its text
# without this entry) as written: only an unchanged file is the report's own to replace
WRITTEN = "written_sha256"
MD_OPENING = re.compile(r"# Results\n\n\d+ run\(s\) in \d+ setting\(s\)\. Accuracies in %\.")


def _head(path: Path, size: int = 4096) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(size)
    except OSError:
        return ""


def _report_json(path: Path) -> dict | None:
    """results.json at `path` as an earlier report wrote it (its keys), else None."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) and JSON_KEYS <= document.keys() else None


def _earlier_json(path: Path) -> bool:
    return _report_json(path) is not None


def _unchanged(path: Path) -> bool:
    """Whether `path` is as the report wrote it, by the sha256 its results.json records (a file
    edited by hand holds the user's work); a report that recorded none is taken as it is."""
    document = _report_json(path.parent / RESULTS_JSON) or {}
    written = document.get(WRITTEN)
    recorded = written.get(path.name) if isinstance(written, dict) else None
    if recorded is None:
        return True
    if path.name == RESULTS_JSON:  # its own sha256: over its text without this entry
        body = {k: v for k, v in document.items() if k != WRITTEN}
        return hashlib.sha256(json_text(body).encode()).hexdigest() == recorded
    return recorded == file_sha256(path)


def earlier_report_file(path: Path) -> bool:
    """Whether `path` is a file an earlier `mixdiff report` wrote, unchanged since (recognised by
    its content and the sha256 results.json records; a figure by its stamp, or, drawn before
    figures were stamped, by the report's results.json beside it), which the next report to
    that folder may replace."""
    if path.name == RESULTS_MD:
        return bool(MD_OPENING.match(_head(path))) and _unchanged(path)
    if path.name == RESULTS_CSV:
        return _head(path).split("\n", 1)[0].rstrip("\r") == ",".join(
            f.name for f in fields(ResultRow)) and _unchanged(path)
    if path.name == RESULTS_JSON:
        return _earlier_json(path) and _unchanged(path)
    return drawn_by(path) == COMMAND or _earlier_json(path.parent / RESULTS_JSON)


@dataclass
class Report:
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is missing or was left out, in words


def _pairs(settings, out: Path, report: Report, rows: int) -> None:
    """Real images beside their twins from every synthetic root the runs used, for the first
    real tree that has any (one grid: the twins of one tree)."""
    roots: dict[str, list[str]] = {}
    for record in (r for s in settings for r in s.runs):
        if record.synthetic_roots:
            known = roots.setdefault(str(record.setting("data.real")), [])
            known += [root for root in record.synthetic_roots if root not in known]
    if not roots:
        report.notes.append(f"{PAIRS} not written: no run has synthetic roots (data.synthetic)")
        return
    real, synthetic = next(iter(roots.items()))
    if len(roots) > 1:
        report.notes.append(f"{PAIRS} shows the twins of {real} only; also used: "
                            f"{', '.join(list(roots)[1:])}")
    try:
        report.files.append(pairs_grid(real, synthetic, out / PAIRS, rows=rows,
                                       command=COMMAND))
    except MixDiffError as exc:  # images moved or paths relative to another folder
        report.notes.append(f"{PAIRS} not written: {exc} (paths in config.yaml are read relative "
                            "to the current folder)")


def single_shift_sources(points: list[Point], rows: list[ResultRow]) -> dict[str, str]:
    """run -> the result file of its shift mean, where that mean is over one shift set (its
    per-image predictions then give the comparison's two-level interval)."""
    found = {}
    for point in points:
        if len(point.suites) == 1:
            for run in point.runs:
                found.update({r.run: r.source for r in rows if r.run == run
                              and r.command == SHIFT and r.evaluation == "offline"
                              and r.dataset == point.suites[0]})
    return found


def write_report(runs: list[str | Path], out: str | Path, spread: str = "std",
                 pair_rows: int = 6, margin: float = EQUIVALENCE_MARGIN) -> Report:
    """`margin`: a comparison whose whole interval lies within ±margin is reported as no
    difference larger than it (a fraction: 0.01 is 1 point)."""
    if spread not in SPREADS:
        raise ConfigError(f"--spread {spread!r}: choose one of {', '.join(SPREADS)}")
    out = Path(out)
    for name in (RESULTS_MD, RESULTS_CSV, RESULTS_JSON, *FIGURES):  # before any work
        refuse_replacing(out / name, f"--out {out}", COMMAND, earlier_report_file)
    report = Report()
    records = load_runs(runs)
    report.notes += [f"{r.name}: {m}" for r in records for m in (*r.missing, *r.early)]
    settings = group_settings(records)
    rows = result_rows(settings)
    points, notes = id_vs_ood_points(settings, rows, spread)
    report.notes += notes
    panels, notes = radar_panels(settings, rows, spread)
    report.notes += notes
    homes = {s.label: setting_home(s, rows) for s in settings}
    shift_of = {run: y for p in points for run, y in zip(p.runs, p.run_y)}
    comparisons = setting_comparisons(settings, rows, homes, shift_of,
                                      single_shift_sources(points, rows), margin)

    if points:
        report.files.append(plot_id_vs_ood(points, out / ID_VS_OOD, spread))
    else:
        report.notes.append(f"{ID_VS_OOD} not written: no run has both an in-distribution and "
                            "robustness results")
    if panels:
        report.files.append(plot_radar(panels, out / RADAR))
    else:
        report.notes.append(f"{RADAR} not written: no run has an offline in-distribution result")
    if any(r.metrics for r in records):
        report.files.append(plot_curves(settings, out / CURVES, spread))
    else:
        report.notes.append(f"{CURVES} not written: no run has metrics.csv rows")
    _pairs(settings, out, report, pair_rows)

    atomic_write_text(out / RESULTS_MD, render(settings, rows, points, spread, report.notes,
                                                      homes, comparisons))
    write_csv(rows, out / RESULTS_CSV)
    document = {
        "spread": {"name": spread, "meaning": SPREADS[spread]},
        "runs": [{"name": r.name, "path": str(r.run.root), "setting": s.label, "kind": r.kind,
                  "method": r.method, "mode": r.mode, "seed": r.seed,
                  "train_dataset": r.train_dataset, "missing": r.missing, "early": r.early}
                 for s in settings for r in s.runs],
        "settings": [{"label": s.label, "kind": s.kind, "method": s.method, "mode": s.mode,
                      "runs": [r.name for r in s.runs], "seeds": s.seeds} for s in settings],
        "comparisons": [c.record() for c in comparisons],
        "id_vs_ood": [{"setting": p.setting.label, "dataset": p.dataset,
                       "id_command": p.id_command, "shift_suites": list(p.suites),
                       "runs": list(p.runs), "id_top1": asdict(p.x), "shift_top1": asdict(p.y)}
                      for p in points],
        "rows": [asdict(r) for r in rows],
        "notes": report.notes,
    }
    document[WRITTEN] = {RESULTS_MD: file_sha256(out / RESULTS_MD),
                         RESULTS_CSV: file_sha256(out / RESULTS_CSV),
                         RESULTS_JSON: hashlib.sha256(json_text(document).encode()).hexdigest()}
    write_json(document, out / RESULTS_JSON)
    report.files += [out / RESULTS_MD, out / RESULTS_CSV, out / RESULTS_JSON]
    return report
