"""The one settings mechanism: each field's rule (allowed names, ranges, whether it changes what
is produced) is declared once, checked by one function, named the way its user wrote it."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import pytest

from mixdiff.cli import app
from mixdiff.config import EXECUTION_KEYS, load_config
from mixdiff.errors import ConfigError
from mixdiff.generate.settings import OUTPUT_KEYS, GenerateSettings
from mixdiff.quickstart import settings_for
from mixdiff.schema import (Rule, check, cli_option, config_key, differences, not_producing,
                              rules, setting)


@dataclass
class Inner:
    rate: float = setting(0.5, above=0.0, most=1.0)
    workers: int = setting(2, least=0, produces=False)


@dataclass
class Outer:
    name: str = setting("a", choices=("a", "b"))
    names: tuple[str, ...] = setting(("a",), choices=("a", "b"))
    inner: Inner = field(default_factory=Inner)
    free: int = 3


def test_rules_walk_nested_sections_and_say_what_does_not_produce():
    found = rules(Outer)
    assert list(found) == ["name", "names", "inner.rate", "inner.workers", "free"]
    assert found["free"] == Rule()
    assert not_producing(Outer) == ("inner.workers",)


@pytest.mark.parametrize("values, config_message, cli_message", [
    ({"name": "c"}, "config key `name` = 'c' is not one of: a, b", "--name 'c' is not one of: a, b"),
    ({"names": ("a", "c")}, "needs names from: a, b", "--names ('a', 'c') needs names from"),
    ({"names": ()}, "needs names from: a, b", "needs names from"),
    ({"inner.rate": 0.0}, "config key `inner.rate` = 0.0 must lie in (0, 1]",
     "--inner.rate must lie in (0, 1], not 0.0"),
    ({"inner.rate": float("nan")}, "config key `inner.rate` = nan must be a finite number",
     "--inner.rate must be a finite number, not nan"),
    ({"free": float("inf")}, "config key `free` = inf must be a finite number",
     "--free must be a finite number, not inf"),  # a field declared without a rule, too
    ({"inner.workers": -1}, "config key `inner.workers` = -1 must be at least 0",
     "--inner.workers must be at least 0, not -1"),
])
def test_one_check_names_the_key_as_its_user_wrote_it(values, config_message, cli_message):
    with pytest.raises(ConfigError, match=re.escape(config_message)):
        check(values, Outer, config_key)
    with pytest.raises(ConfigError, match=re.escape(cli_message)):
        check(values, Outer, cli_option)


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("override, message", [
    ("simclr.temperature=inf", "config key `simclr.temperature` = inf must be a finite number"),
    ("optim.weight_decay=inf", "config key `optim.weight_decay` = inf must be a finite number"),
    ("optim.warmup_epochs=inf", "config key `optim.warmup_epochs` = inf must be a finite number"),
    ("data.eval_resize=inf", "config key `data.eval_resize` = inf must be a finite number"),
    ("optim.lr=-inf", "config key `optim.lr` = -inf must be a finite number"),
    ("optim.betas=[0.9,nan]", "config key `optim.betas` = [0.9, nan] must be a finite number"),
    ("trainer.seed=-1", "config key `trainer.seed` = -1 must lie in [0, 4294967295]"),
    # NUM-vf: 1.0 held out all but one image of each class, and trained on those
    ("data.val_fraction=1.0", "config key `data.val_fraction` = 1.0 must lie in [0, 0.5] (the "
                              "share of each class of data.real held out for the online "
                              "evaluation, at least one image of each; for a larger one, give a "
                              "tree of its own as data.val)"),
    ("trainer.seed=4294967296", "config key `trainer.seed` = 4294967296 must lie in [0, "
                                "4294967295]"),
])
def test_every_number_of_a_config_is_finite_and_in_range_or_refused(override, message):
    """inf passed every `>= 0` rule (and overflowed later, or made the NaN stop blame the learning
    rate); a negative seed crashed in numpy. All are refused when the config is read."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.real=/r", override])
    assert str(caught.value) == message


def test_every_settings_class_refuses_numbers_that_are_not_finite_or_in_range():
    """The same rules check a generation, the generator's training and the quickstart, each value
    named as its option."""
    from mixdiff.generate.embedded import GeneratorTraining

    for refused, message in (
            (lambda: GenerateSettings(guidance=INF).resolved(), "--guidance must be a finite "
                                                                "number, not inf"),
            (lambda: GenerateSettings(strength=(0.3, NAN)).resolved(), "--strength must be a "
                                                                       "finite number"),
            (lambda: GenerateSettings(seed=-1).resolved(), "--seed must lie in [0, 4294967295], "
                                                           "not -1"),
            (lambda: GeneratorTraining(lr=INF).check(), "--lr must be a finite number, not inf"),
            (lambda: GeneratorTraining(seed=2**32).check(), "--seed must lie in [0, 4294967295]"),
            (lambda: settings_for("default", synthetic_weight=INF), "--synthetic-weight must be "
                                                                     "a finite number")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            refused()


def test_an_option_named_otherwise_than_its_field_is_named_as_the_user_typed_it():
    """The quickstart's --filter sets its `min_similarity`: its error names --filter, the option
    the quickstart has."""
    with pytest.raises(ConfigError) as caught:
        settings_for("default", modes=("real", "mixdiff"), min_similarity=1.5)
    assert str(caught.value) == "--filter must lie in [-1, 1], not 1.5"


def test_values_within_their_rules_pass():
    check({"name": "b", "names": ("a", "b"), "inner.rate": 1.0, "inner.workers": 0, "free": -9},
          Outer)
    check({"inner.rate": None}, Outer)  # an optional setting left unset


def test_one_rule_for_the_same_setting():
    assert differences({"a": 1, "b": 2}, {"a": 1, "b": 3}) == ["b"]
    assert differences({"a": 1, "b": 2}, {"a": 1, "b": 3}, ignore=("b",)) == []
    assert differences({"a": 1}, {"a": 1, "c": 0}) == ["c"]  # a key on one side only counts


def test_what_a_run_may_change_is_declared_on_the_fields():
    """The keys a resume may change and the report sets aside are the config fields declared
    produces=False; the generation manifest compares every field that is not."""
    assert set(EXECUTION_KEYS) == {
        "data.num_workers", "trainer.progress_bar", "trainer.log_every_n_steps",
        "trainer.strategy", "trainer.accelerator", "trainer.checkpoint_every_n_steps",
        "trainer.logger", "data.check_images", "augment.backend", "data.decode"}
    assert set(OUTPUT_KEYS) == {
        "generator", "model", "revision", "steps", "guidance", "scheduler", "resolution", "seed",
        "strength", "noise_level", "format", "quality", "save_size", "dtype", "safety_checker",
        "model_sha256"}


def test_a_method_brings_its_defaults_whenever_it_is_chosen():
    """DINO without a preset trains with DINO's multi-crop and weight-decay schedule; what the
    user sets still wins."""
    dino = load_config(None, ["data.real=/r", "method=dino"])
    assert dino.augment.recipe == "dino"
    assert (dino.optim.weight_decay, dino.optim.weight_decay_end) == (0.04, 0.4)
    assert dino.dino.teacher_temperature == 0.04 and dino.dino.clip_grad == 3.0
    mine = load_config(None, ["data.real=/r", "method=dino", "optim.weight_decay_end=0.1",
                              "augment.recipe=none"])
    assert (mine.optim.weight_decay_end, mine.augment.recipe) == (0.1, "none")
    simclr = load_config(None, ["data.real=/r"])
    assert simclr.optim.weight_decay_end is None and simclr.augment.recipe == "simclr"


def test_generate_options_default_to_the_settings_own():
    """Every default of `mixdiff generate` (the ones its --help shows) is GenerateSettings' own,
    defined once, there."""
    import typer.main

    command = typer.main.get_command(app).commands["generate"]
    defaults = asdict(GenerateSettings())
    del defaults["model_sha256"]  # not an option: the runner fills it in
    renamed = {"image_format": "format", "compile_unet": "compile"}
    compared = 0
    for param in command.params:
        name = renamed.get(param.name, param.name)
        if name in defaults:
            assert str(param.default) == str(defaults[name]), param.name  # --strength: text
            compared += 1
    assert compared == len(defaults)


def test_quickstart_options_are_checked_by_the_same_rules():
    for changes, message in (({"strength": 1.5}, "--strength must lie in (0, 1], not 1.5"),
                             ({"real_fraction": 0.0}, "--real-fraction must lie in (0, 1]"),
                             ({"methods": ("byol",)}, "--methods ('byol',) needs names from: "
                                                      "simclr, barlow_twins, dino"),
                             ({"epochs": 0}, "--epochs must be at least 1, not 0"),
                             ({"device": "tpu"}, "--device 'tpu' is not one of: cpu, cuda"),
                             ({"augment": "heavy"}, "--augment 'heavy' is not one of: none")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            settings_for("default", **changes)
    assert settings_for("default", strength=1.0, epochs=None).strength == 1.0
