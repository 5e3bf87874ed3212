"""Backbones: torchvision ResNets and timm ViTs, returning pooled features (no classifier).

`BACKBONES` is the registry: the names `model.backbone` accepts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import timm
import torchvision
from omegaconf import DictConfig
from torch import nn


def _resnet(name: str, model: DictConfig, image_size: int, drop_path_rate: float
            ) -> tuple[nn.Module, int]:
    net = getattr(torchvision.models, name)(weights=None)
    if model.small_stem:  # CIFAR-style stem: keep the resolution of small images
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def _vit(name: str, model: DictConfig, image_size: int, drop_path_rate: float
         ) -> tuple[nn.Module, int]:
    # dynamic_img_size: DINO's local crops are smaller than the global ones
    net = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size,
                            patch_size=model.patch_size, dynamic_img_size=True,
                            drop_path_rate=drop_path_rate)
    return net, net.num_features


@dataclass(frozen=True)
class Backbone:
    """A registry entry: the library that builds it and its name there (torchvision's ResNets
    share their names with timm's, so an export can name the architecture for either)."""

    library: str  # a key of _BUILDERS
    model_name: str

    def __call__(self, model: DictConfig, image_size: int, drop_path_rate: float
                 ) -> tuple[nn.Module, int]:
        return _BUILDERS[self.library](self.model_name, model, image_size, drop_path_rate)


_BUILDERS: dict[str, Callable[..., tuple[nn.Module, int]]] = {"torchvision": _resnet,
                                                              "timm": _vit}
BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("torchvision", "resnet18"),
    "resnet50": Backbone("torchvision", "resnet50"),
    "vit_tiny": Backbone("timm", "vit_tiny_patch16_224"),
    "vit_small": Backbone("timm", "vit_small_patch16_224"),
    "vit_base": Backbone("timm", "vit_base_patch16_224"),
}


def build_backbone(model: DictConfig, image_size: int, drop_path_rate: float = 0.0
                   ) -> tuple[nn.Module, int]:
    """(backbone, feature dimension), randomly initialised: pre-training starts from scratch.
    `drop_path_rate` (ViT stochastic depth) is for a student being trained; a teacher or a frozen
    encoder is built without it."""
    if model.backbone not in BACKBONES:
        raise ValueError(f"unknown model.backbone {model.backbone!r}")
    return BACKBONES[model.backbone](model, image_size, drop_path_rate)
