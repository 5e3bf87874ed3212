"""Anyone's encoder in MixDiff's evaluation: a timm or torchvision network named by `--model`
(`timm/resnet50`, `timm/vit_small_patch16_224`, `torchvision/resnet50`), with the weights of
`--checkpoint FILE`: a plain state dict, a Lightning checkpoint of solo-learn or lightly (the
backbone's keys found under their prefix, or under a Sequential of the network's children as
lightly's examples build it), DINO's official checkpoint (its teacher, or --weights student),
or a training checkpoint that keeps its weights under `model`. Without --checkpoint, the
library's own pretrained weights (from the hub: not offline).

The network is built without its classifier (the pooled features are what is evaluated); a
checkpoint's classifier and other heads (projectors, prototypes, a momentum copy...) are dropped
and said so; a key of the backbone that matches nothing, or matches with another shape, is an
error that names it. The evaluation transform is the model's own: timm's data config, or the
preprocessing of torchvision's weights for that architecture.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from mixdiff.errors import ConfigError, RunDirError
from mixdiff.io import file_sha256

LIBRARIES = ("timm", "torchvision")
# the weights a checkpoint may hold several of (DINO's official checkpoint: both)
WEIGHTS = ("teacher", "student")
# where checkpoints keep the backbone, tried in this order (the longest match wins)
PREFIXES = ("", "module.", "backbone.", "module.backbone.", "encoder.", "model.",
            "module.encoder.", "teacher.backbone.")
# harmless containers that checkpoints from elsewhere carry beside their tensors: DINO's official
# checkpoints keep their command line as an argparse.Namespace (no other code is allowed to run)
EXTERNAL_GLOBALS = (argparse.Namespace,)
_NUMBERED = re.compile(r"^(\d+)\.(.*)$")


@dataclass(frozen=True)
class ExternalModel:
    """`library/name` of a network to evaluate."""

    library: str
    name: str

    @classmethod
    def parse(cls, text: str) -> "ExternalModel":
        library, _, name = text.partition("/")
        if library not in LIBRARIES or not name:
            raise ConfigError(f"--model {text!r}: give timm/NAME (timm/resnet50, "
                              "timm/vit_small_patch16_224) or torchvision/NAME "
                              "(torchvision/resnet50)")
        return cls(library, name)

    @property
    def label(self) -> str:
        return f"{self.library}/{self.name}"

    def build(self, pretrained: bool = False) -> "Network":
        """The network without its classifier, randomly initialised unless `pretrained`."""
        try:
            return _BUILD[self.library](self.name, pretrained)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            if pretrained:
                raise RunDirError(
                    f"{self.label}: its pretrained weights come from the library's hub, which "
                    f"could not be reached or has none ({str(exc).splitlines()[0]}); give "
                    "--checkpoint FILE with the weights on disk") from None
            raise ConfigError(f"--model {self.label}: {self.library} has no such network "
                              f"({str(exc).splitlines()[0]})") from None


@dataclass(frozen=True)
class Preprocessing:
    """A model's evaluation transform: resize the short side, centre crop, normalise."""

    size: int
    resize: int
    interpolation: v2.InterpolationMode
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where it comes from: "timm's data config", "torchvision's ... preprocessing"

    def at(self, size: int) -> "Preprocessing":
        """The same preprocessing at another crop size (the resize keeps its ratio)."""
        return replace(self, size=size, resize=round(size * self.resize / self.size),
                       source=f"{self.source}, at {size} px")

    @property
    def transform(self) -> v2.Compose:
        return v2.Compose([v2.Resize(self.resize, interpolation=self.interpolation,
                                     antialias=True), v2.CenterCrop(self.size),
                           v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(list(self.mean), list(self.std))])

    def text(self) -> str:
        return (f"{self.source}: resize the short side to {self.resize} "
                f"({self.interpolation.value}), centre crop {self.size}, normalise with mean "
                f"{tuple(round(m, 4) for m in self.mean)} and std "
                f"{tuple(round(s, 4) for s in self.std)}")


@dataclass
class Network:
    """A network built for evaluation: its features-only module, the name of the classifier it
    was built without, and its own preprocessing."""

    module: nn.Module
    feature_dim: int
    classifier: tuple[str, ...]  # module names of the removed classifier (their keys: dropped)
    preprocessing: Preprocessing


def _timm(name: str, pretrained: bool) -> Network:
    import timm
    import timm.data

    net = timm.create_model(name, pretrained=pretrained, num_classes=0)
    config = timm.data.resolve_model_data_config(net)
    size = config["input_size"][-1]
    classifier = net.default_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return Network(net, net.num_features, classifier, Preprocessing(
        size, int(size / config["crop_pct"]), v2.InterpolationMode(config["interpolation"]),
        tuple(config["mean"]), tuple(config["std"]), "timm's data config"))


def _torchvision(name: str, pretrained: bool) -> Network:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    net = torchvision.models.get_model(name, weights=weights if pretrained else None)
    # the classifier is the network's last Linear layer: ResNets' fc, ViTs' heads.head,
    # ConvNeXt's and EfficientNet's classifier[-1]
    head, layer = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attribute = head.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attribute, nn.Identity())
    preset = weights.transforms()
    return Network(net, layer.in_features, (head,), Preprocessing(
        preset.crop_size[0], preset.resize_size[0], preset.interpolation, tuple(preset.mean),
        tuple(preset.std), f"torchvision's {weights} preprocessing"))


_BUILD = {"timm": _timm, "torchvision": _torchvision}


@dataclass
class Loaded:
    """What a checkpoint gave: the state dict loaded into the network, and what was dropped."""

    format: str  # how the file was read
    prefix: str  # where its backbone's keys were
    weights: str | None = None  # DINO's official checkpoint: the teacher's or the student's
    dropped: dict[str, int] = field(default_factory=dict)  # dropped key prefix -> tensor count

    def notes(self) -> list[str]:
        """What was dropped, in words."""
        return [f"dropped {count} tensor(s) of `{name}` (not part of the backbone evaluated)"
                for name, count in self.dropped.items()]


def _state_dict(saved: object, path: Path, weights: str | None
                ) -> tuple[dict, str, str | None]:
    """The state dict in a loaded checkpoint file, the format's name, and which of WEIGHTS it
    is where the file holds several."""
    if not isinstance(saved, dict):
        raise RunDirError(f"{path} holds a {type(saved).__name__}, not a state dict or a "
                          "checkpoint")
    if isinstance(saved.get("state_dict"), dict):
        return saved["state_dict"], "Lightning checkpoint (state_dict)", None
    held = [w for w in WEIGHTS if isinstance(saved.get(w), dict)]
    if held:  # DINO's official checkpoint
        chosen = weights or held[0]
        if chosen not in held:
            raise RunDirError(f"{path} holds no {chosen} weights (it has {', '.join(held)}): "
                              f"use --weights {held[0]}")
        return saved[chosen], f"DINO checkpoint ({chosen})", chosen
    if isinstance(saved.get("model"), dict):
        return saved["model"], "training checkpoint (model)", None
    return saved, "state dict", None


def _numbered(keys: list[str], net: nn.Module) -> dict[str, str]:
    """`0.weight` -> `conv1.weight`: the keys of an nn.Sequential of the network's children, as
    lightly's examples make a backbone (`nn.Sequential(*list(resnet.children())[:-1])`)."""
    children = [name for name, _ in net.named_children()]
    renamed = {}
    for key in keys:
        match = _NUMBERED.match(key)
        if match and int(match[1]) < len(children):
            renamed[key] = f"{children[int(match[1])]}.{match[2]}"
    return renamed


def _best_prefix(state: dict, net: nn.Module) -> tuple[str, dict[str, str]]:
    """The prefix under which the checkpoint's keys match the network's best, and the mapping
    checkpoint key -> network key of every key under it."""
    own = set(net.state_dict())
    best = ("", {})
    for prefix in sorted({*PREFIXES, *(k.split(".", 1)[0] + "." for k in state if "." in k)},
                         key=len):
        under = [k for k in state if k.startswith(prefix)]
        plain = {k: k[len(prefix):] for k in under}
        numbered = _numbered([k[len(prefix):] for k in under], net)
        numbered = {prefix + k: v for k, v in numbered.items()}
        for mapping in (plain, numbered):
            if len(own & set(mapping.values())) > len(own & set(best[1].values())):
                best = (prefix, mapping)
    return best


def load_checkpoint_into(net: Network, path: str | Path, weights: str | None = None
                         ) -> Loaded:
    """Load the backbone's weights from `path` into `net` (see the module's text)."""
    from mixdiff.torch_files import load_torch_file

    path = Path(path)
    saved = load_torch_file(path, "checkpoint", allow=EXTERNAL_GLOBALS)
    state, fmt, chosen = _state_dict(saved, path, weights)
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    prefix, mapping = _best_prefix(state, net.module)
    own = net.module.state_dict()
    matched = {mapping[k]: v for k, v in state.items() if k in mapping and mapping[k] in own}
    if not matched:
        raise RunDirError(f"{path}: none of its {len(state)} tensors matches a weight of the "
                          f"network (first keys: {', '.join(list(state)[:5])}); is it another "
                          "architecture?")
    missing = sorted(set(own) - set(matched))
    if missing:
        raise RunDirError(f"{path} ({fmt}, keys under {prefix!r}) has no weights for "
                          f"{len(missing)} of the network's: {', '.join(missing[:8])}"
                          f"{' ...' if len(missing) > 8 else ''}; is it another architecture?")
    shapes = [f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the network"
              for k, v in matched.items() if v.shape != own[k].shape]
    if shapes:
        raise RunDirError(f"{path}: {len(shapes)} weight(s) of another shape: "
                          f"{'; '.join(shapes[:4])}")
    # under the backbone's prefix, only the classifier the network was built without may be
    # left over; anything else is a key that matches nothing
    heads = tuple(f"{name}." for name in net.classifier)
    stray = [k for k in state if k in mapping and mapping[k] not in own
             and not mapping[k].startswith(heads)]
    if stray:
        raise RunDirError(f"{path}: {len(stray)} key(s) of the backbone match nothing in "
                          f"{type(net.module).__name__}: {', '.join(stray[:8])}")
    net.module.load_state_dict(matched)
    loaded = Loaded(fmt, prefix, chosen)
    for key in state:
        if key in mapping and mapping[key] in own:
            continue
        if key in mapping:  # under the backbone's prefix: the classifier (the rest raised above)
            head = next(h for h in net.classifier if mapping[key].startswith(f"{h}."))
            group = f"{prefix}{head} (the classifier)"
        else:  # another module of the checkpoint: a projector, prototypes, a momentum copy...
            group = key.split(".")[0]
        loaded.dropped[group] = loaded.dropped.get(group, 0) + 1
    return loaded


@dataclass
class ExternalEncoder:
    """A network with its weights, ready to encode: what `Encoder.from_model` wraps."""

    model: ExternalModel
    network: Network
    checkpoint: Path | None  # None: the library's own pretrained weights
    identity: str  # sha256 of the checkpoint's bytes, or of the library weights' name
    weights: str  # "teacher" or "student" of a DINO checkpoint; else "student"
    loaded: Loaded | None
    preprocessing: Preprocessing

    @property
    def label(self) -> str:
        """How tables name it: the model, and the checkpoint's file name."""
        return self.model.label + (f" ({self.checkpoint.name})" if self.checkpoint else
                                   " (library weights)")

    @property
    def transform(self) -> v2.Compose:
        return self.preprocessing.transform

    def record(self) -> dict:
        """What a result's settings (and encoder.json) say of it."""
        return {"model": self.model.label, "label": self.label,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "checkpoint_sha256": self.identity,
                "checkpoint_format": self.loaded.format if self.loaded else "library weights",
                "weights": self.weights, "image_size": self.preprocessing.size,
                "eval_transform": self.preprocessing.text(),
                "dropped": dict(self.loaded.dropped) if self.loaded else {}}


def load_external(model: str, checkpoint: str | Path | None = None, weights: str | None = None,
                  image_size: int | None = None) -> ExternalEncoder:
    """The network `model` names with the weights of `checkpoint` (None: the library's own)."""
    spec = ExternalModel.parse(model)
    if weights is not None and weights not in WEIGHTS:
        raise ConfigError(f"--weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
    network = spec.build(pretrained=checkpoint is None)
    loaded, identity = None, hashlib.sha256(f"{spec.label} pretrained".encode()).hexdigest()
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        loaded = load_checkpoint_into(network, checkpoint, weights)
        identity = file_sha256(checkpoint)
    chosen = loaded.weights if loaded and loaded.weights else "student"
    preprocessing = network.preprocessing.at(image_size) if image_size else \
        network.preprocessing
    return ExternalEncoder(spec, network, checkpoint, identity, chosen, loaded, preprocessing)


def describe_encoder(run, found: ExternalEncoder) -> None:
    """Write RUN/encoder.json: the folder holds results of this encoder, not of a run. A folder
    that holds a run, or another encoder's results, is refused."""
    from mixdiff.io import atomic_write_text

    path = run.encoder_record
    if run.config.is_file():
        raise RunDirError(f"{run.root} is a run folder of `mixdiff pretrain`: give --out a "
                          "folder of its own for the results of --model")
    record = found.record()
    if path.is_file():
        before = json.loads(path.read_text())
        if before.get("checkpoint_sha256") != record["checkpoint_sha256"] or \
                before.get("model") != record["model"]:
            raise RunDirError(f"{run.root} holds the results of {before.get('label')}: give "
                              f"--out a folder of its own for {found.label}")
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
