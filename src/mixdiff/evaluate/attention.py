"""Where a ViT looks: the last block's CLS self-attention per head, DINO's thresholded masks, and
the head that looks most sharply.

timm's Attention runs fused scaled-dot-product attention and never forms the attention matrix, so
a forward pre-hook on the last block's attention module catches its input (the block's normed
tokens) and the attention is recomputed from them exactly as the module defines it:
softmax((q_norm(q) * scale) @ k_norm(k)^T) per head, over all tokens (class, registers, patches).

Masks follow DINO's `visualize_attention.py`: per head, the CLS attention over the patches is
renormalised to sum to 1 and the fewest patches holding `threshold` of that mass are kept.
The best head is the one whose renormalised patch attention has the lowest entropy, i.e. the
most concentrated (DINO's figures pick heads by eye; this makes the pick reproducible).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchvision.transforms import v2

from mixdiff.data.tree import load_rgb
from mixdiff.errors import MixDiffError
from mixdiff.evaluate.features import Encoder

DEFAULT_THRESHOLD = 0.6  # DINO's visualize_attention.py keeps 60% of the mass


class NotAViTError(MixDiffError):
    """Attention maps asked of a backbone without self-attention (a ResNet)."""


def require_vit(backbone: nn.Module, what: str) -> VisionTransformer:
    """The backbone as a timm ViT with a class token, or an error naming the run."""
    if not isinstance(backbone, VisionTransformer):
        raise NotAViTError(f"{what}: its backbone is a {type(backbone).__name__}, not a vision "
                           "transformer: there are no attention maps for a ResNet backbone; use "
                           "a ViT run (model.backbone=vit_tiny|vit_small|vit_base)")
    if backbone.cls_token is None:
        raise NotAViTError(f"{what}: its ViT has no class token, whose attention the maps show")
    return backbone


@torch.no_grad()
def last_block_attention(vit: VisionTransformer, images: Tensor) -> Tensor:
    """(B, heads, tokens, tokens): softmax attention of the last block, rows over all tokens."""
    attn = vit.blocks[-1].attn
    caught: list[Tensor] = []
    handle = attn.register_forward_pre_hook(lambda module, args: caught.append(args[0]))
    try:
        vit.forward_features(images)
    finally:
        handle.remove()
    tokens = caught[0]
    batch, length, _ = tokens.shape
    qkv = attn.qkv(tokens).reshape(batch, length, 3, attn.num_heads, attn.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, tokens, head_dim)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


def cls_patch_attention(vit: VisionTransformer, images: Tensor) -> Tensor:
    """(B, heads, h, w): the CLS token's attention to each patch in the last block (the part of
    its softmax row that falls on patches; the rest is on the class and register tokens)."""
    grid = vit.patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
    attention = last_block_attention(vit, images)[:, :, 0, vit.num_prefix_tokens:]
    return attention.reshape(*attention.shape[:2], *grid)


def check_threshold(threshold: float) -> float:
    if not 0.0 < threshold <= 1.0:
        raise MixDiffError(f"--threshold {threshold}: give the fraction of attention mass to keep, "
                           "in (0, 1] (DINO: 0.6)")
    return threshold


def threshold_masks(attention: Tensor, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """(..., h, w) bool: per map, the fewest patches holding `threshold` of its mass."""
    check_threshold(threshold)
    flat = attention.flatten(-2)
    values, order = flat.sort(dim=-1, descending=True)
    mass = values.cumsum(-1) / values.sum(-1, keepdim=True)
    # keep each patch whose predecessors (in descending order) hold less than `threshold`
    keep_sorted = torch.cat([torch.ones_like(mass[..., :1], dtype=torch.bool),
                             mass[..., :-1] < threshold], dim=-1)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(attention.shape)


def head_entropy(attention: Tensor) -> Tensor:
    """(..., heads): entropy (nats) of each head's patch attention, renormalised to sum to 1."""
    p = attention.flatten(-2)
    p = p / p.sum(-1, keepdim=True)
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


@dataclass(frozen=True)
class AttentionMaps:
    """One image's maps from one model."""

    attention: Tensor  # (heads, h, w) CLS -> patch attention
    masks: Tensor  # (heads, h, w) bool, DINO's thresholded masks
    best_head: int  # the most concentrated head (lowest entropy)
    entropy: Tensor  # (heads,)
    threshold: float

    def upsampled(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The best head's attention and mask at image size (nearest: one block per patch, as
        DINO draws them)."""
        both = torch.stack([self.attention[self.best_head],
                            self.masks[self.best_head].float()])[None]
        attention, mask = F.interpolate(both, size=size, mode="nearest")[0]
        return attention, mask > 0.5


def attention_maps(vit: VisionTransformer, images: Tensor,
                   threshold: float = DEFAULT_THRESHOLD) -> list[AttentionMaps]:
    """Maps of each image in a batch of normalised images (B, 3, H, W)."""
    attention = cls_patch_attention(vit, images).cpu()
    masks = threshold_masks(attention, threshold)
    entropy = head_entropy(attention)
    return [AttentionMaps(a, m, int(e.argmin()), e, threshold)
            for a, m, e in zip(attention, masks, entropy)]


def _unnormalise(images: Tensor, transform: v2.Compose) -> Tensor:
    """Images as the model saw them (after resize and crop), back in [0, 1] for display."""
    normalise = next(t for t in transform.transforms if isinstance(t, v2.Normalize))
    mean = torch.tensor(normalise.mean).view(1, -1, 1, 1)
    std = torch.tensor(normalise.std).view(1, -1, 1, 1)
    return (images.cpu() * std + mean).clamp(0, 1)


@dataclass(frozen=True)
class RunAttention:
    """A run's maps of each image, with the images as that run's evaluation transform made them."""

    run: str
    weights: str  # student | teacher
    images: Tensor  # (N, 3, H, W) in [0, 1]
    maps: list[AttentionMaps]


def encoder_attention(encoder: Encoder, paths: list[str | Path], name: str,
                      threshold: float = DEFAULT_THRESHOLD) -> RunAttention:
    """Where a ViT encoder's last block's class token looks in each image (`name`: its column's
    title)."""
    check_threshold(threshold)
    vit = require_vit(encoder.backbone, name)
    to_tensor = v2.PILToTensor()
    batch = torch.stack([encoder.transform(to_tensor(load_rgb(p))) for p in paths])
    maps = attention_maps(vit, batch.to(encoder.device), threshold)
    return RunAttention(name, encoder.weights, _unnormalise(batch, encoder.transform), maps)


def run_attention(run: str | Path, paths: list[str | Path], weights: str | None = None,
                  device: str | None = None,
                  threshold: float = DEFAULT_THRESHOLD) -> RunAttention:
    """A run's ViT (DINO runs: the teacher unless `weights` says otherwise) over the images."""
    check_threshold(threshold)
    return encoder_attention(Encoder.from_run(run, weights, device), paths, Path(run).name,
                             threshold)
