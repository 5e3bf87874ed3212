"""Backbones: torchvision ResNets and timm ViTs, returning pooled features (no classifier)."""

from __future__ import annotations

import timm
import torchvision
from omegaconf import DictConfig
from torch import nn

_VITS = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
         "vit_base": "vit_base_patch16_224"}


def build_backbone(model: DictConfig, image_size: int) -> tuple[nn.Module, int]:
    """(backbone, feature dimension), randomly initialised: pre-training starts from scratch."""
    name = model.backbone
    if name in ("resnet18", "resnet50"):
        net = getattr(torchvision.models, name)(weights=None)
        if model.small_stem:  # CIFAR-style stem: keep the resolution of small images
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim
    if name in _VITS:
        # dynamic_img_size: DINO's local crops are smaller than the global ones
        net = timm.create_model(_VITS[name], pretrained=False, num_classes=0,
                                img_size=image_size, patch_size=model.patch_size,
                                dynamic_img_size=True)
        return net, net.num_features
    raise ValueError(f"unknown model.backbone {name!r}")
