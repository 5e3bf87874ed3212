from mixdiff.models.backbones import build_backbone
from mixdiff.models.heads import DINOHead, projection_mlp

__all__ = ["build_backbone", "DINOHead", "projection_mlp"]
