"""Reading what a run folder holds for the report: its config, data summary, metrics and the
result files of `mixdiff eval` (files only: no model, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import OmegaConf

from mixdiff.errors import RunDirError
from mixdiff.runs import DATA_SUMMARY, METRICS, PIXELS, RunDir, read_json_object, \
    read_result_file

# what a record is: a pre-trained encoder, the untrained reference (`trainer.max_epochs=0`
# without `init_from`: the seed's initial weights), or the raw pixels of the evaluation images
# (results of `--pixels`), or anyone's encoder evaluated with `--model` (a folder with
# encoder.json). max_epochs=0 with init_from is the weights of the run it starts from: trained,
# and a setting of its own (its init_from is part of it, see report.grouping).
TRAINED, UNTRAINED, EXTERNAL = "trained", "untrained", "external"
KINDS = (TRAINED, UNTRAINED, PIXELS, EXTERNAL)
REFERENCES = (UNTRAINED, PIXELS)  # what trained settings are measured against

# Keys every result file of `mixdiff eval` holds (the evaluation contract); the report needs them
# to say what each number is.
REQUIRED_RESULT_KEYS = ("command", "protocol", "dataset", "split", "classes", "images", "top1")


def tree_name(root: str) -> str:
    """An image tree's dataset name as `mixdiff eval` names it: the folder above the tree
    (data/fashion-mnist/train -> fashion-mnist)."""
    return Path(root).parent.name or Path(root).name or "?"


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class RunRecord:
    """One run folder as the report sees it."""

    name: str  # the label in tables and legends (the folder name; parent/name when ambiguous)
    run: RunDir
    config: dict  # config.yaml as plain Python data
    data: dict  # data.json; {} when the run has none
    metrics: list[dict[str, str]]  # metrics.csv rows; [] when the run has none
    results: list[dict]  # the eval result files, each with "source" (its path) added
    missing: list[str] = field(default_factory=list)  # what the report could not find, in words
    kind: str = TRAINED  # one of KINDS
    # results made from a checkpoint of the run while it was still training, in words
    early: list[str] = field(default_factory=list)

    def setting(self, dotted: str, default=None):
        """A config value by its dotted key (`data.mode`)."""
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def method(self) -> str:
        return str(self.setting("method", "?"))

    @property
    def mode(self) -> str:
        return str(self.setting("data.mode", "?"))

    @property
    def seed(self) -> int | None:
        return self.setting("trainer.seed")

    @property
    def train_dataset(self) -> str:
        return tree_name(self.setting("data.real") or "")

    @property
    def synthetic_roots(self) -> list[str]:
        return [str(root) for root in (self.setting("data.synthetic") or [])]


def _read_result(path: Path) -> dict:
    result = read_result_file(path)
    absent = [key for key in REQUIRED_RESULT_KEYS if key not in result]
    if absent:
        raise RunDirError(f"{path}: result file lacks {', '.join(absent)}; re-run the `mixdiff "
                          "eval` command that wrote it")
    for key in ("top1", "top5", "value"):
        value = result.get(key)
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise RunDirError(f"{path}: `{key}` = {value} is not a fraction in [0, 1]")
    return {**result, "source": str(path)}


def load_run(path: str | Path, name: str | None = None) -> RunRecord:
    """Read a run folder; a folder without config.yaml is an error, anything else missing is
    recorded in `missing` so the report can say so and go on. Its results on raw pixels stay in
    `results` (`pixel_record` makes a record of their own from them)."""
    run = RunDir(Path(path))
    if run.encoder_record.is_file() and not run.config.is_file():
        return _external(run)
    config = OmegaConf.to_container(run.load_config(), resolve=False)
    no_epochs = (config.get("trainer") or {}).get("max_epochs") == 0
    untrained = no_epochs and not config.get("init_from")
    missing = []
    data = run.read_data_summary() if run.data_summary.is_file() else {}
    if not data:
        missing.append(f"no {DATA_SUMMARY} (class count and val set of the online metrics unknown)")
    metrics = run.read_metrics() if run.metrics.is_file() else []
    if not metrics and not no_epochs:  # a run of max_epochs=0 has no epochs by design
        missing.append(f"no {METRICS} rows (no training curves, no online metrics)")
    results = [_read_result(p) for p in run.eval_results()]
    if not [r for r in results if r.get("weights") != PIXELS]:
        missing.append(f"no offline results in {run.root / 'eval'}: run `mixdiff eval linear "
                       f"--run {run.root} ...` (and `mixdiff eval robustness`) first")
    return RunRecord(name or run.root.name, run, config, data, metrics, results, missing,
                     UNTRAINED if untrained else TRAINED, early_results(results))


def early_results(results: list[dict]) -> list[str]:
    """The results `mixdiff eval` made while the run was still training (their checkpoint's
    `unfinished`): older than its later numbers (online, other results), said so beside them."""
    early = []
    for result in results:
        unfinished = (result.get("checkpoint") or {}).get("unfinished")
        if unfinished:
            early.append(f"{result['source']} is of epoch {unfinished.get('epoch', '?')} of "
                         f"{unfinished.get('max_epochs', '?')}, made while the run was still "
                         f"training: re-run `mixdiff eval {result['command']}` on the finished "
                         "run")
    return early


def _external(run: RunDir) -> RunRecord:
    """The results of an external encoder (`mixdiff eval ... --model`), named by the model: it
    stands as a setting of its own (method `external`, its label as the data column)."""
    encoder = read_json_object(run.encoder_record)
    label = str(encoder.get("label") or encoder.get("model") or run.root.name)
    results = [_read_result(p) for p in run.eval_results()]
    missing = [] if results else [f"no results in {run.root / 'eval'}"]
    config = {"method": EXTERNAL, "data": {"mode": label},
              "model": {"backbone": encoder.get("model")}}
    return RunRecord(label, run, config, {}, [], results, missing, EXTERNAL)


def pixel_record(record: RunRecord, name: str) -> RunRecord | None:
    """The run's results on raw pixels as a record of their own (they measure no encoder), or
    None where it has none."""
    pixels = [r for r in record.results if r.get("weights") == PIXELS]
    if not pixels:
        return None
    return RunRecord(name, record.run, record.config, record.data, [], pixels, [], PIXELS)


def load_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Read every run; labels are folder names, or parent/name where two folders share a name.
    Results on raw pixels come after the runs, as records named `pixels` (`pixels (RUN)` where
    several runs hold some)."""
    paths = [Path(p) for p in paths]
    if len({p.resolve() for p in paths}) < len(paths):
        raise RunDirError("a run folder is given twice: give each run once")
    names = [p.name for p in paths]
    records = [load_run(p, f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name)
               for p in paths]
    holders = [r for r in records if any(x.get("weights") == PIXELS for x in r.results)]
    pixels = [pixel_record(r, PIXELS if len(holders) == 1 else f"{PIXELS} ({r.name})")
              for r in holders]
    runs = [replace(r, results=[x for x in r.results if x.get("weights") != PIXELS])
            for r in records]
    return runs + [p for p in pixels if p is not None]
