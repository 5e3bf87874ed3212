"""The typed configuration of a pre-training run: every default lives here, in one place.

A run's config is built from these dataclasses, then a YAML file (which may name `_base_` files to
start from), then `key=value` overrides in OmegaConf's dotlist syntax. Unknown keys, wrong types and
values outside a key's allowed set are refused with an error that names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mixdiff.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    real: str = ""  # image tree: <root>/<class>/<image>
    image_size: int = 224  # training resolution (global crops)
    synthetic: list[str] = field(default_factory=list)  # one root per variant, mirroring `real`
    val: Optional[str] = None  # labelled tree for the online evaluation; None: hold-out of `real`
    val_fraction: float = 0.05  # size of that seeded, stratified hold-out
    mode: str = "real"  # real | synthetic | mixdiff | pooled
    p_synthetic: float = 1.0  # mixdiff: probability that the second view is synthetic
    # pooled: samples per epoch. real: as many as the real images used (a different draw of the
    # pool each epoch), so every mode runs the same optimiser steps; all: every real and synthetic
    # image once (twice the steps with one variant)
    pooled_epoch: str = "real"
    real_fraction: float = 1.0  # seeded, stratified fraction of the real training images used
    missing_synthetic: str = "error"  # error | fallback_real
    num_workers: int = 8
    eval_resize: float = 1.14  # evaluation: resize the short side to image_size * this, centre crop
    check_images: str = "header"  # before training: header (every file opens), decode, or none
    # where training images are decoded and cropped: cpu (loader workers) or device (the training
    # device, nvJPEG on a GPU; workers only read files; needs augment.backend=batched)
    decode: str = "cpu"


@dataclass
class AugmentConfig:
    recipe: str = "simclr"  # simclr | asymmetric | byol | dino | none (see data/views.py)
    # batched: loader workers crop and flip; colour, grey, blur, solarise run per sample on the whole
    # batch on the training device. per_image: everything per image in the workers (torchvision)
    backend: str = "batched"
    synthetic_augment: bool = True  # False: views of synthetic images are only resized and cropped
    crop_min_scale: float = 0.08
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5  # simclr recipe (the others fix blur and solarize per view)
    solarize_p: float = 0.0  # simclr recipe
    # dino multi-crop
    global_crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    local_crop_size: Optional[int] = None  # None: 96/224 of data.image_size
    local_crops_real: int = 6
    local_crops_synthetic: int = 2  # only drawn from synthetic images in mixdiff mode
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # resnet18 | resnet50 | vit_tiny | vit_small | vit_base
    small_stem: bool = False  # ResNet: 3x3 stride-1 first conv and no max-pool (32 px images)
    patch_size: int = 16  # ViT
    drop_path_rate: float = 0.0  # ViT stochastic depth, student only (DINO's ViTs: 0.1)


@dataclass
class SimCLRConfig:
    proj_layers: int = 2  # linear layers in the projector (SimCLR: 2)
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    temperature: float = 0.2


@dataclass
class BarlowTwinsConfig:
    proj_layers: int = 3  # linear layers in the projector (Barlow Twins: 3, 8192-8192-8192)
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    lambd: float = 0.005
    scale_loss: float = 1.0


@dataclass
class DINOConfig:
    proj_hidden_dim: int = 2048
    bottleneck_dim: int = 256
    out_dim: int = 65536
    norm_last_layer: bool = True
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    warmup_teacher_temperature: float = 0.04
    warmup_teacher_temperature_epochs: int = 0
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996  # EMA momentum, raised to 1.0 on a cosine schedule
    freeze_last_layer_epochs: int = 1
    clip_grad: Optional[float] = 3.0  # DINO's clip: each student parameter's gradient norm


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd | lars
    lr: float = 5e-4  # per 256 images of global batch: lr = lr * batch_size * world_size / 256
    weight_decay: float = 4e-5
    weight_decay_end: Optional[float] = None  # cosine schedule to this value (DINO: 0.04 -> 0.4)
    momentum: float = 0.9  # sgd, lars
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    warmup_epochs: float = 10.0
    min_lr_ratio: float = 1e-3  # cosine ends at this fraction of the peak
    exclude_bias_and_norm: bool = True  # no weight decay (and no LARS adaptation) on them
    probe_lr: float = 1e-3  # online linear probe (AdamW, no weight decay, not scaled)


@dataclass
class OnlineEvalConfig:
    """The online evaluation during pre-training (offline evaluation is `mixdiff eval`)."""

    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_max_train_images: Optional[int] = None  # kNN bank: all training images, or a seeded subset
    every_n_epochs: int = 1


@dataclass
class TrainerConfig:
    max_epochs: int = 100  # 0: no training, the untrained reference (the seed's initial weights)
    batch_size: int = 256  # per device
    precision: str = "auto"  # auto: bf16-mixed where the hardware has bf16, else 16-mixed / 32-true
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: Optional[bool] = None  # None: on when training on more than one GPU
    seed: int = 0
    channels_last: bool = True
    gradient_clip_val: Optional[float] = None
    limit_train_batches: float = 1.0  # a fraction (<=1.0) or a number of batches (>1)
    log_every_n_steps: int = 50
    progress_bar: bool = True  # on a terminal; otherwise (or False) one log line per epoch
    checkpoint_every_n_steps: Optional[int] = None  # also save last.ckpt every N optimiser steps
    logger: str = "tensorboard"  # tensorboard | csv | wandb | none, beside metrics.csv


@dataclass
class MixDiffConfig:
    method: str = "simclr"  # simclr | barlow_twins | dino
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


PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "64-true")
IMAGE_CHECKS = ("header", "decode", "none")
POOLED_EPOCHS = ("real", "all")


# The names of the registries' entries. A registry (`mixdiff.methods.METHODS`, `data.paired.MODES`,
# `data.views.RECIPES` and `BACKENDS`, `models.backbones.BACKBONES`, `methods.OPTIMIZERS`,
# `loggers.LOGGERS`) imports torch and what it registers; reading a config must not, so the names
# live here, and tests/test_config.py checks that each registry defines exactly these.
METHOD_NAMES = ("simclr", "barlow_twins", "dino")
MODE_NAMES = ("real", "synthetic", "mixdiff", "pooled")
MISSING_POLICIES = ("error", "fallback_real")
DECODE_PLACES = ("cpu", "device")  # where training images are decoded (device: device_decode.py)
RECIPE_NAMES = ("simclr", "asymmetric", "byol", "dino", "none")
AUGMENT_BACKEND_NAMES = ("batched", "per_image")
BACKBONE_NAMES = ("resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base")
OPTIMIZER_NAMES = ("adamw", "sgd", "lars")
LOGGER_NAMES = ("tensorboard", "csv", "wandb", "none")

ALLOWED_VALUES: dict[str, tuple[str, ...]] = {
    "method": METHOD_NAMES, "data.mode": MODE_NAMES, "data.missing_synthetic": MISSING_POLICIES,
    "data.check_images": IMAGE_CHECKS, "data.decode": DECODE_PLACES,
    "data.pooled_epoch": POOLED_EPOCHS, "augment.recipe": RECIPE_NAMES,
    "augment.backend": AUGMENT_BACKEND_NAMES, "model.backbone": BACKBONE_NAMES,
    "optim.name": OPTIMIZER_NAMES, "trainer.precision": PRECISIONS,
    "trainer.logger": LOGGER_NAMES}


UNIT_INTERVAL = ("data.p_synthetic", "data.real_fraction", "data.val_fraction",
                 "augment.crop_min_scale", "augment.color_jitter_p", "augment.grayscale_p",
                 "augment.blur_p", "augment.solarize_p", "optim.min_lr_ratio",
                 "model.drop_path_rate")

RENAMED = {"eval": "online_eval"}  # old section name -> new one (`eval` is `mixdiff eval` now)
# keys whose default is not what runs written before the key existed did: key -> what they did
ADDED_SINCE = {"data.pooled_epoch": "all"}

# The one list of keys that say how a run is executed, not what it learns (devices and num_nodes
# are not among them: they set the global batch and so the learning rate). A resumed run may
# change them, and the report counts runs that differ only in them (and the seed) as seeds of one
# setting.
EXECUTION_KEYS = ("data.num_workers", "trainer.progress_bar", "trainer.log_every_n_steps",
                  "trainer.strategy", "trainer.accelerator", "trainer.checkpoint_every_n_steps",
                  "trainer.logger", "data.check_images",
                  "augment.backend", "data.decode")  # the same views, made elsewhere
# Keys that may change when an existing run directory is resumed: how it runs, and how long.
RESUMABLE_KEYS = ("trainer.max_epochs", *EXECUTION_KEYS)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read a YAML config, merging the files its `_base_` key names (relative to it) underneath."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `_base_` files include each other in a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    bases = node.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / base, seen + (path,)))
    return OmegaConf.merge(merged, node)


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    message = str(exc).splitlines()[0]
    return f"config key `{key}`: {message}" if key else message


def _check_values(cfg: DictConfig) -> None:
    for key, allowed in ALLOWED_VALUES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key `{key}` = {value!r} is not one of: {', '.join(allowed)}")
    for key in UNIT_INTERVAL:
        value = OmegaConf.select(cfg, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"config key `{key}` = {value!r} must lie in [0, 1]")
    if cfg.data.real_fraction <= 0.0:
        raise ConfigError("config key `data.real_fraction` must be greater than 0")
    if not cfg.data.real:
        raise ConfigError("config key `data.real` is required: the image tree to pre-train on")
    if cfg.data.mode != "real" and not cfg.data.synthetic:
        raise ConfigError(f"config key `data.synthetic` is empty, but data.mode={cfg.data.mode} "
                          "needs at least one synthetic root")
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
    if cfg.trainer.max_epochs < 0:
        raise ConfigError(f"config key `trainer.max_epochs` = {cfg.trainer.max_epochs} must be at "
                          "least 0 (0: the untrained reference, the seed's initial weights)")
    for key in ("trainer.batch_size", "data.image_size",
                "online_eval.knn_k", "simclr.proj_layers", "barlow_twins.proj_layers",
                "trainer.checkpoint_every_n_steps", "online_eval.every_n_epochs"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"config key `{key}` = {value} must be at least 1")


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


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
                ) -> DictConfig:
    """Defaults, then the YAML file at `path`, then dotlist `overrides`; validated."""
    schema = OmegaConf.structured(MixDiffConfig)
    try:
        if path is not None:
            schema = OmegaConf.merge(schema, _user_node(_read_yaml(Path(path)), str(path)))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            node = _user_node(OmegaConf.from_dotlist([item]), f"override {item!r}")
            schema = OmegaConf.merge(schema, node)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc)) from None
    _check_values(schema)
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
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in a.keys() | b.keys() if k not in ignore and a.get(k) != b.get(k))

