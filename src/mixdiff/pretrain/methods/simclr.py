"""SimCLR (Chen et al., 2020): NT-Xent between the projections of all views of a sample."""

from __future__ import annotations

import torch
from torch import Tensor

from mixdiff.pretrain.losses import info_nce_loss
from mixdiff.pretrain.methods.base import SSLMethod
from mixdiff.models import projection_mlp


class SimCLR(SSLMethod):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        args = self.cfg.simclr
        self.projector = projection_mlp(self.feature_dim, args.proj_hidden_dim,
                                        args.proj_output_dim, layers=args.proj_layers)

    def ssl_loss(self, views: list[Tensor], features: list[Tensor], index: Tensor) -> Tensor:
        z = self.projector(torch.cat(features))
        return info_nce_loss(z, index.repeat(len(views)), self.cfg.simclr.temperature)
