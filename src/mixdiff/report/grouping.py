"""Grouping runs into settings: runs whose configs differ only in the seed (and in keys that do not
change what is learnt) are seeds of one setting, reported as a mean and a spread."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from mixdiff.config import EXECUTION_KEYS, flatten
from mixdiff.report.collect import EXTERNAL, REFERENCES, TRAINED, UNTRAINED, RunRecord
from mixdiff.runs import PIXELS
from mixdiff.schema import identity

SEED_KEY = "trainer.seed"
# Keys that differ between seeds of one setting without changing what is learnt: the seed, the
# run a stage starts from (its path names the seed's own run), and how the run was executed.
NOT_A_SETTING = (SEED_KEY, "init_from", *EXECUTION_KEYS)
NAMING_KEYS = ("method", "data.mode")  # a setting is called by these first
# What the features of an untrained encoder depend on (not the method, mode or schedule it would
# have trained with), and, without the model keys, what the raw-pixel features depend on.
EVALUATION_KEYS = ("data.image_size", "data.eval_resize", "augment.mean", "augment.std")
UNTRAINED_KEYS = ("model.", *EVALUATION_KEYS)


def setting_key(record: RunRecord) -> tuple:
    flat = flatten(record.config)
    if record.kind == EXTERNAL:  # one encoder, named by its model and weights
        return (EXTERNAL, record.name)
    if record.kind != TRAINED:  # references: one per backbone (untrained) and dataset
        kept = UNTRAINED_KEYS if record.kind == UNTRAINED else EVALUATION_KEYS
        return (record.kind, record.train_dataset) + tuple(sorted(
            (k, repr(v)) for k, v in flat.items() if k.startswith(kept)))
    # whether a run starts from another one is part of the setting; which seed's run is not
    starts_from_a_run = flat.get("init_from") is not None
    return tuple(sorted((k, repr(v)) for k, v in identity(flat, NOT_A_SETTING).items())) + (
        ("init_from", repr(starts_from_a_run)),)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class Setting:
    """Runs of one configuration, one per seed."""

    label: str
    runs: tuple[RunRecord, ...]

    @property
    def method(self) -> str:
        return self.runs[0].method

    @property
    def mode(self) -> str:
        return self.runs[0].mode

    @property
    def kind(self) -> str:
        """trained, or a reference: untrained or pixels (see report.collect)."""
        return self.runs[0].kind

    @property
    def reference(self) -> bool:
        """untrained or pixels: what trained settings are measured against (grey in figures)."""
        return self.kind in REFERENCES

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]


def _short(value: object) -> str:
    """A config value as a label: paths by their last two parts, lists by their items."""
    if isinstance(value, list):
        return "+".join(_short(v) for v in value) or "none"
    text = str(value)
    return "/".join(Path(text).parts[-2:]) if "/" in text else text


def _collisions(labels: list[str]) -> list[list[int]]:
    return [same for label in dict.fromkeys(labels)
            if len(same := [i for i, other in enumerate(labels) if other == label]) > 1]


def _labels(groups: list[list[RunRecord]]) -> list[str]:
    """`method · mode` (references: `untrained`, `pixels`); then the training dataset, then the
    other keys that tell settings apart, where that is not enough."""
    flats = [flatten(g[0].config) for g in groups]
    labels = [g[0].name if g[0].kind == EXTERNAL else g[0].kind if g[0].kind != TRAINED else
              " · ".join(_short(f.get(k, "?")) for k in NAMING_KEYS) for g, f in zip(groups, flats)]
    for same in _collisions(labels):
        if len({groups[i][0].train_dataset for i in same}) > 1:
            for i in same:
                labels[i] += f" · {groups[i][0].train_dataset}"
    for same in _collisions(labels):
        # the keys of the grouping itself (setting_key), so that what tells settings apart is
        # exactly what is shown; only as many as it takes for every label to differ
        keyed = [dict(setting_key(groups[i][0])[2:] if groups[i][0].kind != TRAINED
                      else setting_key(groups[i][0])) for i in same]
        keys = sorted(set().union(*keyed) - set(NAMING_KEYS))
        shown: list[str] = []
        for key in keys:
            before = len({tuple(k.get(c) for c in shown) for k in keyed})
            if before == len(same):
                break
            if len({tuple(k.get(c) for c in (*shown, key)) for k in keyed}) > before:
                shown.append(key)
        ends = [key.split(".")[-1] for key in shown]
        names = [end if ends.count(end) == 1 else key for key, end in zip(shown, ends)]
        for i, values in zip(same, keyed):
            labels[i] += " (" + ", ".join(
                f"{name}={_short(_value(values.get(key)))}" for name, key in zip(names, shown)) + ")"
    return labels


def _value(text: str | None) -> object:
    """A value of `setting_key` (its repr) back as the value, for the label."""
    if text is None:
        return "none"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def group_settings(records: list[RunRecord]) -> list[Setting]:
    """Settings in the order their first run was given, after the references (pixels, then
    untrained); runs within one sorted by seed."""
    records = sorted(records, key=lambda r: {PIXELS: 0, UNTRAINED: 1}.get(r.kind, 2))
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(setting_key(record), []).append(record)
    members = [sorted(g, key=lambda r: (r.seed is None, r.seed or 0)) for g in groups.values()]
    return [Setting(label, tuple(g)) for label, g in zip(_labels(members), members)]
