"""Backbones: torchvision ResNets and timm ViTs, returning pooled features (no classifier).

`BACKBONES` is the registry: the names `model.backbone` accepts."""

from __future__ import annotations

from functools import partial
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


BACKBONES: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "resnet18": partial(_resnet, "resnet18"),
    "resnet50": partial(_resnet, "resnet50"),
    "vit_tiny": partial(_vit, "vit_tiny_patch16_224"),
    "vit_small": partial(_vit, "vit_small_patch16_224"),
    "vit_base": partial(_vit, "vit_base_patch16_224"),
}


def build_backbone(model: DictConfig, image_size: int, drop_path_rate: float = 0.0
                   ) -> tuple[nn.Module, int]:
    """(backbone, feature dimension), randomly initialised: pre-training starts from scratch.
    `drop_path_rate` (ViT stochastic depth) is for a student being trained; a teacher or a frozen
    encoder is built without it."""
    if model.backbone not in BACKBONES:
        raise ValueError(f"unknown model.backbone {model.backbone!r}")
    return BACKBONES[model.backbone](model, image_size, drop_path_rate)
