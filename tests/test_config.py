import re

import pytest
from omegaconf import OmegaConf

from mixdiff.config import differing_keys, load_config, to_yaml
from mixdiff.errors import ConfigError

BASE = ["data.real=/some/tree"]


def test_defaults_and_overrides():
    cfg = load_config(None, BASE + ["method=barlow_twins", "data.synthetic=[a,b]",
                                    "trainer.max_epochs=3", "data.mode=mixdiff"])
    assert cfg.method == "barlow_twins"
    assert list(cfg.data.synthetic) == ["a", "b"]
    assert cfg.trainer.max_epochs == 3
    assert cfg.data.p_synthetic == 1.0  # the paper's default


@pytest.mark.parametrize("override, names", [
    (["data.reel=x"], "data.reel"),
    (["methd=simclr"], "methd"),
    (["method=byol"], "simclr, barlow_twins, dino"),
    (["data.mode=mixed"], "pooled"),
    (["augment.recipe=heavy"], "asymmetric"),
    (["trainer.max_epochs=many"], "trainer.max_epochs"),
    (["data.p_synthetic=1.5"], "data.p_synthetic"),
    (["data.mode=mixdiff"], "data.synthetic"),
    (["augment.recipe=dino"], "method=dino"),
    (["nonsense"], "key=value"),
])
def test_bad_values_name_the_key(override, names):
    with pytest.raises(ConfigError, match=re.escape(names)):
        load_config(None, BASE + override)


def test_renamed_section_is_refused_with_its_new_name(tmp_path):
    with pytest.raises(ConfigError, match="`eval` is now called `online_eval`"):
        load_config(None, BASE + ["eval.knn_k=5"])
    (tmp_path / "old.yaml").write_text("data: {real: /r}\neval: {knn_k: 5}\n")
    with pytest.raises(ConfigError, match=r"old\.yaml.*online_eval"):
        load_config(tmp_path / "old.yaml")
    assert load_config(None, BASE + ["online_eval.knn_k=5"]).online_eval.knn_k == 5


def test_one_synthetic_root_needs_no_brackets(tmp_path):
    cfg = load_config(None, BASE + ["data.synthetic=SYN/v0", "data.mode=mixdiff"])
    assert list(cfg.data.synthetic) == ["SYN/v0"]
    (tmp_path / "one.yaml").write_text("data: {real: /r, synthetic: SYN/v1, mode: mixdiff}\n")
    assert list(load_config(tmp_path / "one.yaml").data.synthetic) == ["SYN/v1"]
    with pytest.raises(ConfigError, match=re.escape("data.synthetic=[ROOT_A,ROOT_B]")):
        load_config(None, BASE + ["data.synthetic=SYN/v0,SYN/v1"])


def test_missing_real_is_named():
    with pytest.raises(ConfigError, match="data.real"):
        load_config(None, [])


def test_base_files_and_yaml(tmp_path):
    (tmp_path / "base.yaml").write_text("method: dino\naugment: {recipe: dino}\n"
                                        "trainer: {max_epochs: 7}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrainer: {max_epochs: 9}\n"
                                         "data: {real: /r}\n")
    cfg = load_config(tmp_path / "child.yaml", ["trainer.batch_size=3"])
    assert (cfg.method, cfg.trainer.max_epochs, cfg.trainer.batch_size) == ("dino", 9, 3)
    assert "_base_" not in to_yaml(cfg)
    again = load_config(tmp_path / "child.yaml", ["trainer.batch_size=3"])
    assert differing_keys(cfg, again) == []


@pytest.mark.parametrize("base, said", [
    ("data: {val_fraction: 2}\n", "config key `data.val_fraction` = 2.0 must lie in [0, 0.5]"),
    ("method: byol\n", "config key `method` = 'byol' is not one of"),
    ("data: {reel: x}\n", "config key `data.reel`: Key 'reel' not in 'DataConfig'"),
    ("trainer: {max_epochs: many}\n", "config key `trainer.max_epochs`: Value 'many'"),
])
def test_a_bad_key_or_value_names_the_base_file_that_set_it(tmp_path, base, said):
    """CFS: a `_base_` file's bad value or unknown key was said without a file name, as if the
    file given had it; an override of the value is checked as the override."""
    (tmp_path / "base.yaml").write_text(base)
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ndata: {real: /r}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "child.yaml")
    assert str(refused.value).startswith(f"{tmp_path / 'base.yaml'} (the `_base_` of "
                                         f"{tmp_path / 'child.yaml'}): {said}"), refused.value
    if "val_fraction" in base:  # an override's value is what counts
        assert load_config(tmp_path / "child.yaml", ["data.val_fraction=0.1"]).data.val_fraction \
            == 0.1
    (tmp_path / "child.yaml").write_text(base + "data: {real: /r}\n" if "data:" not in base
                                         else base.replace("{", "{real: /r, "))
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'child.yaml'}: {said}")):
        load_config(tmp_path / "child.yaml")
    with pytest.raises(ConfigError) as refused:
        load_config(None, BASE + ["data.val_fraction=0.9"])
    assert str(refused.value).startswith("config key `data.val_fraction` = 0.9 must lie in")


def test_bad_yaml_names_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("data: {real: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_config_file_is_refused_by_name(tmp_path, text):
    """An empty --config trained ResNet-50 at 224 px from the defaults, without a word."""
    (tmp_path / "empty.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'empty.yaml'} is empty")):
        load_config(tmp_path / "empty.yaml", BASE)
    (tmp_path / "child.yaml").write_text("_base_: empty.yaml\ntrainer: {max_epochs: 9}\n")
    with pytest.raises(ConfigError, match=re.escape("empty.yaml (the `_base_` of")):
        load_config(tmp_path / "child.yaml", BASE)


@pytest.mark.parametrize("content", [
    "root:x:0:0:SECRET:/root:/bin/bash\ndaemon:x:1:1:SECRET:/usr/sbin\n",  # /etc/passwd
    "- SECRET\n- SECRET\n",  # a list
    "token: [SECRET\n",  # not YAML
    "password: SECRET\n",  # a mapping, but of no config key: the key is named, not its value
    "data: SECRET\n",  # a section that holds a value
])
def test_a_message_about_a_config_file_names_it_and_never_shows_its_content(tmp_path, content):
    """`_base_` may name any file (/etc/passwd was printed whole, twice, as a "config key")."""
    (tmp_path / "private").write_text(content)
    (tmp_path / "config.yaml").write_text(f"_base_: {tmp_path / 'private'}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "config.yaml", BASE)
    message = str(caught.value)
    assert str(tmp_path / "private") in message and "SECRET" not in message


def test_a_mistyped_section_is_named(tmp_path):
    (tmp_path / "typo.yaml").write_text("trainr: {max_epochs: 3}\n")
    with pytest.raises(ConfigError, match=re.escape("typo.yaml: `trainr` is not a config "
                                                    "section or key")):
        load_config(tmp_path / "typo.yaml", BASE)


def test_differing_keys_ignores_resumable_ones():
    a = load_config(None, BASE)
    b = load_config(None, BASE + ["trainer.max_epochs=500", "optim.lr=0.1", "data.num_workers=1"])
    assert differing_keys(a, b) == ["optim.lr"]
    assert differing_keys(OmegaConf.create({"x": 1}), OmegaConf.create({"y": 1})) == ["x", "y"]


def test_shipped_configs_load():
    from pathlib import Path
    configs = sorted(p for p in Path(__file__).parents[1].glob("configs/*/*.yaml")
                     if not p.name.startswith("_"))
    assert len(configs) == 15  # 3 methods x 4 modes for ImageNet-100, 3 Fashion-MNIST presets
    for path in configs:
        cfg = load_config(path, ["data.real=/r", "data.synthetic=[/s]"])
        method, _, mode = path.stem.rpartition("_")
        if path.parent.name == "imagenet100":
            assert (cfg.method, cfg.data.mode) == (method, mode)
            assert cfg.model.backbone == ("vit_small" if method == "dino" else "resnet50")
        else:
            assert cfg.method == path.stem


def test_a_run_written_before_newer_keys_reads_with_their_defaults(tmp_path):
    """Every reader of a run's config.yaml (evaluation, report, resume) sees today's schema."""
    from mixdiff.runs import RunDir

    cfg = OmegaConf.to_container(load_config(None, ["data.real=/data", "data.decode=device"]))
    del cfg["data"]["decode"], cfg["model"]["drop_path_rate"]  # keys added after that run
    cfg["eval"] = cfg.pop("online_eval")  # and a section renamed since
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    saved = RunDir(tmp_path).load_config()
    assert saved.data.decode == "cpu" and saved.model.drop_path_rate == 0.0
    assert saved.online_eval == load_config(None, ["data.real=/data"]).online_eval


def test_the_names_config_allows_are_the_registries_keys():
    """config.py declares the names (reading a config imports no torch); each registry must
    define exactly them, in the same order."""
    from mixdiff import config
    from mixdiff.pretrain.input.paired import MODES
    from mixdiff.pretrain.input.views import AUGMENT_BACKENDS, RECIPES
    from mixdiff.pretrain.loggers import LOGGERS
    from mixdiff.pretrain.methods import METHODS, OPTIMIZERS
    from mixdiff.models.backbones import BACKBONES

    for registry, names in ((METHODS, config.METHOD_NAMES), (MODES, config.MODE_NAMES),
                            (RECIPES, config.RECIPE_NAMES), (AUGMENT_BACKENDS, config.AUGMENT_BACKEND_NAMES),
                            (BACKBONES, config.BACKBONE_NAMES), (OPTIMIZERS, config.OPTIMIZER_NAMES),
                            (LOGGERS, config.LOGGER_NAMES)):
        assert tuple(registry) == names


def test_reading_a_config_loads_no_torch():
    import subprocess
    import sys

    code = ("import sys; import mixdiff.config as c; c.load_config(None, ['data.real=/x']); "
            "print(sorted(m for m in ('torch', 'lightning', 'timm', 'kornia', 'diffusers') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
