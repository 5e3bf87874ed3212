"""One settings mechanism for every stage: a setting is a typed dataclass field, and its metadata
says which values it takes and whether it changes what is produced.

The pre-training config (`config.MixDiffConfig`), a generation run (`generate.settings`), the
embedded generator's training (`generate.embedded.GeneratorTraining`) and the quickstart
(`quickstart.QuickstartSettings`) declare their fields with `setting(...)`. One `check` validates
any of them and names the culprit the way its user wrote it: `config key `data.mode`` for a config,
`--strength` for a command-line option. One rule says which keys make two runs different
(`differences`): resume, the generation manifest and the report's grouping of seeds all use it.

Imports nothing heavy: reading and checking settings must not load torch.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterable, Mapping

from mixdiff.errors import ConfigError

RULE = "mixdiff.rule"  # the metadata key of a field's Rule


@dataclass(frozen=True)
class Rule:
    """What values a setting takes. Every number, of any setting (one declared without a rule
    too, and each number of a list), must be finite; bounds apply to numbers; None (an optional
    setting left unset) always passes."""

    choices: tuple = ()
    least: float | None = None  # value >= least
    above: float | None = None  # value > above
    most: float | None = None  # value <= most
    produces: bool = True  # False: how the work runs, not what it makes (devices, workers, logs)
    hint: str = ""  # said after the reason, in brackets
    option: str = ""  # the command-line option, where it is not --FIELD-NAME (e.g. --filter)

    def problem(self, value: Any) -> tuple[str, str] | None:
        """(kind, reason) when `value` breaks the rule: kind 'choice' or 'range'."""
        found = self._problem(value)
        return found if found is None or not self.hint else (found[0], f"{found[1]} ({self.hint})")

    def _problem(self, value: Any) -> tuple[str, str] | None:
        if value is None:
            return None
        if self.choices and isinstance(value, (list, tuple)):  # a list of names: each, and one
            if not value or any(item not in self.choices for item in value):
                return "choice", f"needs names from: {', '.join(map(str, self.choices))}"
            return None
        if self.choices and value not in self.choices:
            return "choice", f"is not one of: {', '.join(str(c) for c in self.choices)}"
        if isinstance(value, (list, tuple)):  # a list of numbers (a mixture): each one
            return next(filter(None, map(self._problem, value)), None)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        if not math.isfinite(value):  # inf passes `>= 0` and overflows later; nan passes nothing
            return "range", "must be a finite number"
        low = self.above if self.above is not None else self.least
        fails = (self.above is not None and not value > self.above) \
            or (self.least is not None and not value >= self.least) \
            or (self.most is not None and not value <= self.most)
        if not fails:
            return None
        if low is not None and self.most is not None:
            opening = "(" if self.above is not None else "["
            return "range", f"must lie in {opening}{_number(low)}, {_number(self.most)}]"
        if self.most is not None:
            return "range", f"must be at most {_number(self.most)}"
        if self.above is not None:
            return "range", "must be positive" if self.above == 0 else \
                f"must be above {_number(low)}"
        return "range", f"must be at least {_number(low)}"


def _number(bound: float) -> str:
    """A bound as written: 4294967295, not 4.29497e+09; 0.08 as 0.08."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def setting(default: Any = MISSING, *, factory: Callable[[], Any] | Any = MISSING,
            choices: Iterable = (), least: float | None = None, above: float | None = None,
            most: float | None = None, produces: bool = True, hint: str = "",
            option: str = "") -> Any:
    """A dataclass field with its rule (see `Rule`)."""
    rule = Rule(tuple(choices), least, above, most, produces, hint, option)
    return field(default=default, default_factory=factory, metadata={RULE: rule})


def seed_setting(default: int = 0) -> Any:
    """A random seed: what numpy, torch and Lightning all take (0 to 2**32 - 1)."""
    return setting(default, least=0, most=2**32 - 1)


def rules(cls: type, prefix: str = "") -> dict[str, Rule]:
    """{'section.key': Rule} for every leaf field of a dataclass, nested sections included (a field
    declared without `setting` gets the empty rule)."""
    found: dict[str, Rule] = {}
    for item in fields(cls):
        if item.default_factory is not MISSING and is_dataclass(item.default_factory):
            found.update(rules(item.default_factory, f"{prefix}{item.name}."))
        else:
            found[f"{prefix}{item.name}"] = item.metadata.get(RULE, Rule())
    return found


def not_producing(cls: type) -> tuple[str, ...]:
    """The keys that say how the work runs, not what it makes."""
    return tuple(key for key, rule in rules(cls).items() if not rule.produces)


def config_key(key: str, value: Any, kind: str, reason: str) -> str:
    """How a config names a bad value."""
    return f"config key `{key}` = {value!r} {reason}"


def cli_option(key: str, value: Any, kind: str, reason: str) -> str:
    """How a command-line option names a bad value (field `save_size` is option `--save-size`,
    unless its rule names another option)."""
    option = key if key.startswith("--") else "--" + key.replace("_", "-")
    return f"{option} {value!r} {reason}" if kind == "choice" else f"{option} {reason}, not {value}"


def check(values: Mapping[str, Any], cls: type, say: Callable[..., str] = config_key) -> None:
    """Refuse the first value (of a flat {'section.key': value}) that breaks its field's rule."""
    for key, rule in rules(cls).items():
        if key in values and (problem := rule.problem(values[key])):
            raise ConfigError(say(rule.option or key, values[key], *problem))


def identity(values: Mapping[str, Any], ignore: Iterable[str] = ()) -> dict[str, Any]:
    """The values that make a setting what it is: all but the ignored keys."""
    ignored = set(ignore)
    return {key: value for key, value in values.items() if key not in ignored}


def differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                ignore: Iterable[str] = ()) -> list[str]:
    """The keys whose values differ once the ignored ones are set aside (a key on one side only
    counts): the one rule for "is this the same setting?"."""
    a, b = identity(saved, ignore), identity(current, ignore)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))
