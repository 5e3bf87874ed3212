"""The report's numbers: one row per run and metric, each saying what it is (online/offline,
protocol, dataset, split, class count, images, weights, checkpoint epoch); which of them is a
run's in-distribution and which its distribution-shift accuracy; means and spreads over seeds."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mixdiff.io import atomic_open, atomic_write_text
from mixdiff.report.collect import RunRecord, tree_name
from mixdiff.report.grouping import Setting
from mixdiff.runs import PIXELS, Metric

IN_DISTRIBUTION = ("linear", "knn")  # commands, in order of preference, for a run's own dataset
SHIFT = "robustness"
COMMAND_NAMES = {"linear": "linear", "knn": "kNN", "robustness": "shift", "transfer": "transfer"}
# metrics.csv column -> (its column in compact tables, its protocol)
ONLINE = {Metric.KNN_VAL_TOP1: ("online kNN", ("online weighted kNN (cosine, k={k}, T={t}) on "
                                               "student features; bank: real training images; "
                                               "scored every {every} epoch(s) during "
                                               "pre-training")),
          Metric.PROBE_VAL_TOP1: ("online probe", ("online linear probe on detached student "
                                                   "features, trained on the training views "
                                                   "during pre-training"))}
# how the spread over seeds is drawn (error bars, bands) and written: the text says what it is
SPREADS = {"std": "±1 sample standard deviation over seeds",
           "minmax": "minimum to maximum over seeds"}


@dataclass(frozen=True)
class ResultRow:
    run: str
    setting: str
    method: str
    mode: str
    seed: int | None
    evaluation: str  # "online" | "offline"
    command: str  # knn | linear | robustness | transfer | online_knn | online_probe
    column: str  # the short name of this number in compact tables and figures
    protocol: str
    dataset: str
    split: str
    classes: int | None
    images: int | None
    metric: str  # "top1" or the dataset's conventional metric
    value: float  # fraction in [0, 1]
    top1: float | None
    top5: float | None
    weights: str
    checkpoint_epoch: int | None  # as saved in the checkpoint; online: the metrics.csv epoch
    source: str  # the file the number was read from


METRIC_NAMES = {"mean_per_class_accuracy": "mean per-class acc."}  # headline metrics not top-1


def _column(result: dict, default_weights: str) -> str:
    name = str(result["dataset"])
    if result["command"] in IN_DISTRIBUTION:
        name = f"{name} {COMMAND_NAMES[result['command']]}"
    metric = result.get("metric", "top1")
    if metric != "top1":
        name = f"{name} ({METRIC_NAMES.get(metric, metric)})"
    weights = result.get("weights", default_weights)
    return name if weights == default_weights else f"{name} ({weights})"


def default_weights(record: RunRecord) -> str:
    """The weights `mixdiff eval` uses when not told: the teacher where the run has one (its
    results say so), else the student. Results of the other weights are labelled as such. A
    record of raw-pixel results has only those."""
    if record.kind == PIXELS:
        return PIXELS
    return "teacher" if any(r.get("weights") == "teacher" for r in record.results) else "student"


def offline_rows(record: RunRecord, setting: str) -> list[ResultRow]:
    rows = []
    default = default_weights(record)
    for r in record.results:
        checkpoint = r.get("checkpoint") or {}
        rows.append(ResultRow(
            record.name, setting, record.method, record.mode, record.seed,
            "online" if r.get("online") else "offline", str(r["command"]), _column(r, default),
            str(r["protocol"]), str(r["dataset"]), str(r["split"]), int(r["classes"]),
            int(r["images"]), str(r.get("metric", "top1")), float(r.get("value", r["top1"])),
            float(r["top1"]), None if r.get("top5") is None else float(r["top5"]),
            str(r.get("weights", "")), checkpoint.get("epoch"), r["source"]))
    return rows


def _val_set(record: RunRecord) -> tuple[str, str]:
    """(dataset, split) of the images the online metrics were scored on."""
    val = record.setting("data.val")
    if val:
        return tree_name(val), Path(val).name
    fraction = record.setting("data.val_fraction", 0.0)
    return record.train_dataset, f"hold-out {fraction:.0%} of train"


def online_rows(record: RunRecord, setting: str) -> list[ResultRow]:
    """The online kNN and probe accuracy of the last epoch that evaluated them."""
    rows = []
    dataset, split = _val_set(record)
    online_eval = record.setting("online_eval") or record.setting("eval") or {}  # old name: eval
    for metric, (column, protocol) in ONLINE.items():
        evaluated = [r for r in record.metrics if r.get(metric)]
        if not evaluated:
            continue
        last = evaluated[-1]
        value = float(last[metric])
        rows.append(ResultRow(
            record.name, setting, record.method, record.mode, record.seed, "online",
            metric.split("/")[0], column,
            protocol.format(k=online_eval.get("knn_k", "?"), t=online_eval.get("knn_temperature",
                            "?"), every=online_eval.get("every_n_epochs", "?")),
            dataset, split, len(record.data["classes"]) if "classes" in record.data else None,
            record.data.get("val_images"), "top1", value, value, None, "student",
            int(last["epoch"]), str(record.run.metrics)))
    return rows


def result_rows(settings: list[Setting]) -> list[ResultRow]:
    """Every number of every run: offline results first, then the online ones."""
    return [row for s in settings for r in s.runs
            for row in offline_rows(r, s.label) + online_rows(r, s.label)]


def in_distribution(rows: list[ResultRow], record: RunRecord) -> ResultRow | None:
    """The run's in-distribution number: its offline linear result, else kNN, preferring its
    default weights, then its own dataset (by name, then by class count) when it has several."""
    own = {record.train_dataset, _val_set(record)[0]}
    classes = len(record.data.get("classes", ())) or None
    default = default_weights(record)
    for command in IN_DISTRIBUTION:
        candidates = [r for r in rows if r.run == record.name and r.command == command
                      and r.evaluation == "offline"]
        if candidates:
            return min(candidates, key=lambda r: (r.weights != default, r.dataset not in own,
                                                  r.classes != classes, r.dataset))
    return None


def evaluated_on(row: ResultRow) -> str:
    """What an in-distribution number measures; runs are compared only within one of these."""
    return f"{row.dataset} {row.split}, {row.classes} classes"


def setting_home(setting: Setting, rows: list[ResultRow]) -> str:
    """The in-distribution dataset a setting is compared on (its first run that has one)."""
    for record in setting.runs:
        row = in_distribution(rows, record)
        if row is not None:
            return evaluated_on(row)
    return f"trained on {setting.runs[0].train_dataset}, no offline in-distribution result"


def shift_rows(rows: list[ResultRow], run: str, weights: str) -> list[ResultRow]:
    """The run's distribution-shift results with these weights (for `corruptions`: its overall
    top-1, the mean over the corruption grid)."""
    return [r for r in rows if r.run == run and r.command == SHIFT and r.evaluation == "offline"
            and r.weights == weights]


@dataclass(frozen=True)
class Summary:
    """Mean and spread of one number over the seeds of a setting."""

    mean: float
    low: float  # the lower end of the error bar (mean - std, or the minimum)
    high: float
    n: int
    spread: str  # a key of SPREADS

    @classmethod
    def of(cls, values: list[float], spread: str = "std") -> Summary:
        mean = statistics.fmean(values)
        if spread == "minmax":
            return cls(mean, min(values), max(values), len(values), spread)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(mean, mean - std, mean + std, len(values), spread)

    def percent(self) -> str:
        """`71.3`, `71.3 ± 0.4` (std) or `71.3 [70.9, 71.8]` (min-max), in percent."""
        if self.n < 2:
            return f"{100 * self.mean:.1f}"
        if self.spread == "std":
            return f"{100 * self.mean:.1f} ± {100 * (self.high - self.mean):.1f}"
        return f"{100 * self.mean:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


# --- files ------------------------------------------------------------------------------------
def write_csv(rows: list[ResultRow], path: Path) -> Path:
    with atomic_open(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(ResultRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return path


def json_text(document: dict) -> str:
    """A JSON document as the report writes it."""
    return json.dumps(document, indent=2) + "\n"


def write_json(document: dict, path: Path) -> Path:
    atomic_write_text(path, json_text(document))
    return path
