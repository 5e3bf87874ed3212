"""MixDiff: self-supervised pre-training on real images paired with diffusion-generated variations."""

__version__ = "0.1.0"
