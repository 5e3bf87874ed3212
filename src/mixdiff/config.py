"""The typed configuration of a pre-training run: every default lives here, in one place.

A run's config is built from these dataclasses, then a YAML file (which may name `_base_` files to
start from), then `key=value` overrides in OmegaConf's dotlist syntax. Unknown keys, wrong types and
values outside a key's allowed set are refused with an error that names the key.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mixdiff.errors import ConfigError
from mixdiff.schema import check, config_key, differences, not_producing, rules, seed_setting, \
    setting

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# The names of the registries' entries. A registry (`pretrain.methods.METHODS` and `OPTIMIZERS`,
# `pretrain.input.paired.MODES`, `pretrain.input.views.RECIPES` and `AUGMENT_BACKENDS`,
# `models.backbones.BACKBONES`, `pretrain.loggers.LOGGERS`) imports torch and what it registers;
# reading a config must not, so the names live here, and tests/test_config.py checks that each
# registry defines exactly these.
METHOD_NAMES = ("simclr", "barlow_twins", "dino")
MODE_NAMES = ("real", "synthetic", "mixdiff", "pooled", "extra")
MISSING_POLICIES = ("error", "fallback_real")
DECODE_PLACES = ("cpu", "device")  # where training images are decoded (device: device_decode.py)
RECIPE_NAMES = ("simclr", "asymmetric", "byol", "dino", "none")
AUGMENT_BACKEND_NAMES = ("batched", "per_image")
BACKBONE_NAMES = ("resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base")
OPTIMIZER_NAMES = ("adamw", "sgd", "lars")
LOGGER_NAMES = ("tensorboard", "csv", "wandb", "none")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "64-true")
IMAGE_CHECKS = ("header", "decode", "none")
POOLED_EPOCHS = ("real", "all")
FRACTION = {"least": 0.0, "most": 1.0}  # a probability or a share, in [0, 1]


@dataclass
class DataConfig:
    real: str = ""  # image tree: <root>/<class>/<image>
    image_size: int = setting(224, least=1)  # training resolution (global crops)
    synthetic: list[str] = field(default_factory=list)  # one root per variant, mirroring `real`
    val: Optional[str] = None  # labelled tree for the online evaluation; None: hold-out of `real`
    # size of that seeded, stratified hold-out: at most half (more would train on less than it
    # evaluates on; 1 left one image per class), at least one image of each class (so 0 is that)
    val_fraction: float = setting(0.05, least=0.0, most=0.5, hint=(
        "the share of each class of data.real held out for the online evaluation, at least one "
        "image of each; for a larger one, give a tree of its own as data.val"))
    mode: str = setting("real", choices=MODE_NAMES)
    p_synthetic: float = setting(1.0, **FRACTION)  # mixdiff: probability the 2nd view is synthetic
    # extra: views of twins added to the real views as further positives, each from another root
    synthetic_views: int = setting(1, least=1)
    # extra: lambda, the weight of the loss terms whose positive pair includes a synthetic view
    synthetic_weight: float = setting(1.0, above=0.0)
    # pooled: samples per epoch. real: as many as the real images used (a different draw of the
    # pool each epoch), so every mode runs the same optimiser steps; all: every real and synthetic
    # image once (twice the steps with one variant)
    pooled_epoch: str = setting("real", choices=POOLED_EPOCHS)
    # seeded, stratified fraction of the real training images used
    real_fraction: float = setting(1.0, above=0.0, most=1.0)
    missing_synthetic: str = setting("error", choices=MISSING_POLICIES)
    # twins filtered by their scores (`data verify --fidelity RUN --scores FILE.csv`): a sample
    # whose twins are all dropped uses its real image in their place
    synthetic_scores: Optional[str] = None
    synthetic_min_similarity: Optional[float] = setting(None, least=-1.0, most=1.0)
    synthetic_require_class_kept: bool = False
    num_workers: int = setting(8, least=0, produces=False)
    # evaluation: resize the short side to image_size * this, centre crop
    eval_resize: float = setting(1.14, above=0.0)
    # before training: header (every file opens), decode, or none
    check_images: str = setting("header", choices=IMAGE_CHECKS, produces=False)
    # where training images are decoded and cropped: cpu (loader workers) or device (the training
    # device, nvJPEG on a GPU; workers only read files; needs augment.backend=batched). The same
    # views, made elsewhere
    decode: str = setting("cpu", choices=DECODE_PLACES, produces=False)


@dataclass
class AugmentConfig:
    # simclr | asymmetric | byol | dino | none (see pretrain/input/views.py)
    recipe: str = setting("simclr", choices=RECIPE_NAMES)
    # batched: loader workers crop and flip; colour, grey, blur, solarise run per sample on the
    # whole batch on the training device. per_image: everything per image in the workers.
    # The same views, made elsewhere
    backend: str = setting("batched", choices=AUGMENT_BACKEND_NAMES, produces=False)
    synthetic_augment: bool = True  # False: views of synthetic images are only resized and cropped
    crop_min_scale: float = setting(0.08, **FRACTION)
    color_jitter_p: float = setting(0.8, **FRACTION)
    brightness: float = setting(0.4, least=0.0)
    contrast: float = setting(0.4, least=0.0)
    saturation: float = setting(0.2, least=0.0)
    hue: float = setting(0.1, least=0.0, most=0.5)
    grayscale_p: float = setting(0.2, **FRACTION)
    blur_p: float = setting(0.5, **FRACTION)  # simclr recipe (the others fix blur and solarize)
    solarize_p: float = setting(0.0, **FRACTION)  # simclr recipe
    # dino multi-crop
    global_crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    local_crop_size: Optional[int] = setting(None, least=1)  # None: 96/224 of data.image_size
    local_crops_real: int = setting(6, least=0)
    local_crops_synthetic: int = setting(2, least=0)  # only from synthetic images, mixdiff mode
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class ModelConfig:
    backbone: str = setting("resnet50", choices=BACKBONE_NAMES)
    small_stem: bool = False  # ResNet: 3x3 stride-1 first conv and no max-pool (32 px images)
    patch_size: int = setting(16, least=1)  # ViT
    # ViT stochastic depth, student only (DINO's ViTs: 0.1)
    drop_path_rate: float = setting(0.0, **FRACTION)


@dataclass
class SimCLRConfig:
    proj_layers: int = setting(2, least=1)  # linear layers in the projector (SimCLR: 2)
    proj_hidden_dim: int = setting(2048, least=1)
    proj_output_dim: int = setting(128, least=1)
    temperature: float = setting(0.2, above=0.0)


@dataclass
class BarlowTwinsConfig:
    # linear layers in the projector (Barlow Twins: 3, 8192-8192-8192)
    proj_layers: int = setting(3, least=1)
    proj_hidden_dim: int = setting(2048, least=1)
    proj_output_dim: int = setting(2048, least=1)
    lambd: float = setting(0.005, least=0.0)
    scale_loss: float = setting(1.0, above=0.0)


@dataclass
class DINOConfig:
    proj_hidden_dim: int = setting(2048, least=1)
    bottleneck_dim: int = setting(256, least=1)
    out_dim: int = setting(65536, least=1)
    norm_last_layer: bool = True
    student_temperature: float = setting(0.1, above=0.0)
    teacher_temperature: float = setting(0.04, above=0.0)
    warmup_teacher_temperature: float = setting(0.04, above=0.0)
    warmup_teacher_temperature_epochs: int = setting(0, least=0)
    center_momentum: float = setting(0.9, **FRACTION)
    momentum_teacher: float = setting(0.996, **FRACTION)  # EMA, raised to 1.0 on a cosine
    freeze_last_layer_epochs: int = setting(1, least=0)
    # DINO's clip: each student parameter's gradient norm
    clip_grad: Optional[float] = setting(3.0, above=0.0)


@dataclass
class OptimConfig:
    name: str = setting("adamw", choices=OPTIMIZER_NAMES)
    # per 256 images of global batch: lr = lr * batch_size * world_size / 256
    lr: float = setting(5e-4, least=0.0)  # 0: the weights stay as they start (init_from)
    weight_decay: float = setting(4e-5, least=0.0)
    # cosine schedule to this value (DINO: 0.04 -> 0.4)
    weight_decay_end: Optional[float] = setting(None, least=0.0)
    momentum: float = setting(0.9, **FRACTION)  # sgd, lars
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    warmup_epochs: float = setting(10.0, least=0.0)
    min_lr_ratio: float = setting(1e-3, **FRACTION)  # cosine ends at this fraction of the peak
    exclude_bias_and_norm: bool = True  # no weight decay (and no LARS adaptation) on them
    probe_lr: float = setting(1e-3, above=0.0)  # online linear probe (AdamW, no decay, not scaled)


@dataclass
class OnlineEvalConfig:
    """The online evaluation during pre-training (offline evaluation is `mixdiff eval`)."""

    knn_k: int = setting(20, least=1)
    knn_temperature: float = setting(0.07, above=0.0)
    # kNN bank: all training images, or a seeded subset
    knn_max_train_images: Optional[int] = setting(None, least=1)
    # val images scored: all, or a seeded, stratified subset (a large test split, scored in full
    # offline, need not be encoded at every online evaluation)
    max_val_images: Optional[int] = setting(None, least=1)
    every_n_epochs: int = setting(1, least=1)


@dataclass
class TrainerConfig:
    # 0: no training, the untrained reference (the seed's initial weights; with init_from, the
    # weights it names, which are not untrained)
    max_epochs: int = setting(100, least=0, hint="0: the untrained reference, the seed's initial "
                              "weights")
    batch_size: int = setting(256, least=1)  # per device
    # auto: bf16-mixed where the hardware has bf16, else 16-mixed / 32-true
    precision: str = setting("auto", choices=PRECISIONS)
    accelerator: str = setting("auto", produces=False)
    devices: Any = 1
    num_nodes: int = setting(1, least=1)
    strategy: str = setting("auto", produces=False)
    sync_batchnorm: Optional[bool] = None  # None: on when training on more than one GPU
    seed: int = seed_setting()
    channels_last: bool = True
    gradient_clip_val: Optional[float] = setting(None, above=0.0)
    # a fraction (<=1.0) or a number of batches (>1)
    limit_train_batches: float = setting(1.0, above=0.0)
    log_every_n_steps: int = setting(50, least=1, produces=False)
    # on a terminal; otherwise (or False) one log line per epoch
    progress_bar: bool = setting(True, produces=False)
    # also save last.ckpt every N optimiser steps
    checkpoint_every_n_steps: Optional[int] = setting(None, least=1, produces=False)
    # tensorboard | csv | wandb | none, beside metrics.csv
    logger: str = setting("tensorboard", choices=LOGGER_NAMES, produces=False)


@dataclass
class MixDiffConfig:
    method: str = setting("simclr", choices=METHOD_NAMES)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    barlow_twins: BarlowTwinsConfig = field(default_factory=BarlowTwinsConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    online_eval: OnlineEvalConfig = field(default_factory=OnlineEvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    init_from: Optional[str] = None  # a checkpoint whose weights start this run (not its state)


# Defaults that come with a method, whenever it is chosen (a preset, a YAML file or an override may
# still set each): DINO's multi-crop, and its weight decay rising 0.04 -> 0.4 on a cosine. Its
# teacher temperature and gradient clipping are the `dino` section's own defaults.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "dino": {"augment.recipe": "dino", "optim.weight_decay": 0.04, "optim.weight_decay_end": 0.4},
}

ALLOWED_VALUES: dict[str, tuple] = {key: rule.choices for key, rule in rules(MixDiffConfig).items()
                                    if rule.choices}

RENAMED = {"eval": "online_eval"}  # old section name -> new one (`eval` is `mixdiff eval` now)
# keys whose default is not what runs written before the key existed did: key -> what they did
ADDED_SINCE = {"data.pooled_epoch": "all"}

# The keys that say how a run is executed, not what it learns (the fields declared with
# produces=False; devices and num_nodes are not among them: they set the global batch and so the
# learning rate). A resumed run may change them, and the report counts runs that differ only in
# them (and the seed) as seeds of one setting.
EXECUTION_KEYS = not_producing(MixDiffConfig)
# Keys that may change when an existing run directory is resumed: how it runs, and how long.
RESUMABLE_KEYS = ("trainer.max_epochs", *EXECUTION_KEYS)


SECTIONS = tuple(item.name for item in fields(MixDiffConfig))
NESTED = tuple(item.name for item in fields(MixDiffConfig) if item.default_factory is not MISSING)
BASE_KEY = "_base_"
CONFIG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # what a config key looks like


def _yaml_problem(exc: Exception) -> str:
    """What is wrong with a file that does not parse, by line and column: never its text (a
    `_base_` may name any file, and a message must not show what that file holds)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem}, line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _read_yaml(path: Path, origins: dict[str, str], seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read a YAML config, merging the files its `_base_` key names (relative to it) underneath.
    A file that is not a mapping of config sections is refused by name, without its content.
    `origins` gets, for each key set, the file whose value wins (a message names it)."""
    path = path.resolve()
    where = f"{path} (the `_base_` of {seen[-1]})" if seen else str(path)
    if path in seen:
        raise ConfigError(f"{where}: `_base_` files include each other in a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {where}")
    try:
        # the top level as written: OmegaConf would read a bare text as a mapping of one key
        raw = yaml.safe_load(path.read_text())
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError, undecodable bytes, and friends
        raise ConfigError(f"{where}: not valid YAML ({_yaml_problem(exc)})") from None
    if raw is None or raw == {}:
        raise ConfigError(f"{where} is empty: it sets no config key; give the config file "
                          "meant, or " + ("remove it from `_base_`" if seen else "leave --config "
                                          "out (and give data.real=DIR)"))
    strangers = [key for key in raw if key not in (*SECTIONS, BASE_KEY, *RENAMED)] \
        if isinstance(raw, dict) else None
    if strangers is None or any(not CONFIG_NAME.fullmatch(str(key)) for key in strangers):
        raise ConfigError(f"{where} is not a mixdiff config: expected a mapping of config "
                          f"sections and keys ({', '.join(SECTIONS)}) at the top level")
    if strangers:
        raise ConfigError(f"{where}: `{strangers[0]}` is not a config section or key (they "
                          f"are: {', '.join(SECTIONS)})")
    flat = [key for key in NESTED if key in raw and not isinstance(raw[key], (dict, type(None)))]
    if flat:
        raise ConfigError(f"{where}: config section `{flat[0]}` holds a value, not keys "
                          f"(e.g. {flat[0]}: {{key: value}})")
    bases = node.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / base, origins, seen + (path,)))
    origins.update(dict.fromkeys(flatten(OmegaConf.to_container(node)), where))
    return OmegaConf.merge(merged, node)


def _describe(exc: OmegaConfBaseException, origins: dict[str, str] | None = None) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    message = str(exc).splitlines()[0]
    said = f"config key `{key}`: {message}" if key else message
    return _set_in(origins or {}, str(key), said)


def _set_in(origins: dict[str, str], key: str, message: str) -> str:
    """`message` about `key`, after the name of the config file that set it, if one did (a
    `_base_` file's key is not in the file the user gave)."""
    return f"{origins[key]}: {message}" if key in origins else message


def _check_values(cfg: DictConfig, origins: dict[str, str]) -> None:
    # each key's own rule: allowed names, ranges
    check(flatten(cfg), MixDiffConfig,
          lambda key, *problem: _set_in(origins, key, config_key(key, *problem)))
    if not cfg.data.real:
        raise ConfigError("config key `data.real` is required: the image tree to pre-train on")
    if cfg.data.mode != "real" and not cfg.data.synthetic:
        raise ConfigError(f"config key `data.synthetic` is empty, but data.mode={cfg.data.mode} "
                          "needs at least one synthetic root")
    if cfg.data.mode != "extra":
        for key, default in (("synthetic_views", 1), ("synthetic_weight", 1.0)):
            if cfg.data[key] != default:
                raise ConfigError(f"config key `data.{key}` = {cfg.data[key]} adds twins to the "
                                  "real views: it needs data.mode=extra, not "
                                  f"data.mode={cfg.data.mode}")
    elif cfg.data.synthetic_views > len(cfg.data.synthetic):
        raise ConfigError(f"config key `data.synthetic_views` = {cfg.data.synthetic_views}, but "
                          f"data.synthetic has {len(cfg.data.synthetic)} root(s): each twin view "
                          "of a sample comes from another root; give as many roots or fewer views")
    filtering = cfg.data.synthetic_min_similarity is not None or \
        cfg.data.synthetic_require_class_kept
    if filtering and not cfg.data.synthetic_scores:
        raise ConfigError("config keys `data.synthetic_min_similarity` and "
                          "`data.synthetic_require_class_kept` filter twins by their scores: "
                          "give data.synthetic_scores=FILE.csv (mixdiff data verify --fidelity "
                          "RUN --scores FILE.csv)")
    if cfg.data.decode == "device" and cfg.augment.backend != "batched":
        raise ConfigError("config key `data.decode` = 'device' needs augment.backend=batched (the "
                          f"views are finished on the device), not {cfg.augment.backend!r}")
    dino_method, dino_recipe = cfg.method == "dino", cfg.augment.recipe == "dino"
    if dino_recipe and not dino_method:
        raise ConfigError(f"config key `augment.recipe` = 'dino' (multi-crop) needs method=dino, "
                          f"not {cfg.method}")
    if dino_method and cfg.augment.recipe not in ("dino", "none"):
        raise ConfigError(f"config key `augment.recipe` = {cfg.augment.recipe!r}: method=dino "
                          "takes 'dino' (multi-crop) or 'none'")
    if cfg.model.backbone.startswith("vit") and cfg.data.image_size % cfg.model.patch_size:
        raise ConfigError(f"config key `data.image_size` = {cfg.data.image_size} is not a "
                          f"multiple of model.patch_size = {cfg.model.patch_size}")


def _user_node(node: DictConfig, where: str) -> DictConfig:
    """Refuse renamed sections, and let `data.synthetic` be a single path as well as a list."""
    for old, new in RENAMED.items():
        if old in node:
            raise ConfigError(f"{where}: config section `{old}` is now called `{new}` "
                              f"(e.g. {new}.knn_k); rename it")
    synthetic = OmegaConf.select(node, "data.synthetic")
    if isinstance(synthetic, str):
        if "," in synthetic:
            raise ConfigError(f"{where}: config key `data.synthetic` = {synthetic!r}: write "
                              "several roots as a list, data.synthetic=[ROOT_A,ROOT_B]")
        node.data.synthetic = [synthetic]
    return node


def _merged(given: list[tuple[DictConfig, dict[str, str]]]) -> DictConfig:
    """The defaults with each node merged on in turn; a key a node cannot set is refused under
    the name of the file that set it (its origins)."""
    merged = OmegaConf.structured(MixDiffConfig)
    for node, origins in given:
        try:
            merged = OmegaConf.merge(merged, node)
        except OmegaConfBaseException as exc:
            raise ConfigError(_describe(exc, origins)) from None
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
                ) -> DictConfig:
    """Defaults, then the chosen method's defaults (METHOD_DEFAULTS), then the YAML file at `path`,
    then dotlist `overrides`; validated."""
    origins: dict[str, str] = {}  # key -> the config file that set it
    given: list[tuple[DictConfig, dict[str, str]]] = []  # each node, and who set its keys
    overridden: set[str] = set()  # keys an override sets: its value, not a file's, is checked
    try:
        if path is not None:
            given.append((_user_node(_read_yaml(Path(path), origins), str(path)), origins))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            given.append((_user_node(OmegaConf.from_dotlist([item]), f"override {item!r}"), {}))
            overridden.update(flatten(given[-1][0]))
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc)) from None
    schema = _merged(given)
    method_defaults = METHOD_DEFAULTS.get(schema.method, {})
    if method_defaults:  # beneath what was given: merged again on top of them
        schema = _merged([(OmegaConf.from_dotlist(
            [f"{key}={value}" for key, value in method_defaults.items()]), {}), *given])
    _check_values(schema, {k: v for k, v in origins.items() if k not in overridden})
    OmegaConf.set_readonly(schema, True)
    return schema


def load_saved_config(path: str | Path) -> DictConfig:
    """A run's saved config.yaml, on today's schema: renamed sections take their new names and keys
    added since it was written take their defaults, so an older run compares cleanly."""
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}): the run's "
                          "config is damaged; restore it (or leave the run out)") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} holds no mapping of config keys: the run's config is damaged; "
                          "restore it (or leave the run out)")
    for old, new in RENAMED.items():
        if old in node and new not in node:
            node[new] = node.pop(old)
    for key, value in ADDED_SINCE.items():
        if OmegaConf.select(node, key, default=None) is None:
            OmegaConf.update(node, key, value)
    try:
        return OmegaConf.merge(OmegaConf.structured(MixDiffConfig), node)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {_describe(exc)} (written by another version of mixdiff?)"
                          ) from None


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} for every leaf of a config."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in container.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(saved: DictConfig, current: DictConfig, ignore=RESUMABLE_KEYS) -> list[str]:
    """Keys whose values differ between two configs (a key absent on one side counts)."""
    return differences(flatten(saved), flatten(current), ignore)

