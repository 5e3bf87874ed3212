"""Schedules shared by pre-training and generator training: learning rate, weight decay,
EMA momentum."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """A value going from `start` to `end` along a half cosine over `total_steps` (DINO's weight
    decay 0.04 -> 0.4, and its teacher momentum)."""
    progress = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
