"""SimCLR (Chen et al., 2020): NT-Xent between the projections of all views of a sample.

In extra mode every view of a sample is a positive of every other (the multi-positive NT-Xent of
StableRep and CLSP), and lambda weights each positive pair that includes a synthetic view inside
the sum over positives: the twin pulls less, and its row's negatives are unchanged."""

from __future__ import annotations

import torch
from torch import Tensor

from mixdiff.pretrain.input.paired import REAL
from mixdiff.pretrain.losses import info_nce_loss
from mixdiff.pretrain.methods.base import SSLMethod
from mixdiff.models import projection_mlp


class SimCLR(SSLMethod):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        args = self.cfg.simclr
        self.projector = projection_mlp(self.feature_dim, args.proj_hidden_dim,
                                        args.proj_output_dim, layers=args.proj_layers)

    def ssl_loss(self, views: list[Tensor], features: list[Tensor], index: Tensor,
                 sources: Tensor) -> Tensor:
        """The multi-positive NT-Xent over all views; a positive pair with a twin's view in it is
        weighted data.synthetic_weight (lambda; 1 outside extra mode, where it changes nothing)."""
        z = self.projector(torch.cat(features))
        synthetic = sources.T.reshape(-1) != REAL  # view-major, as z
        return info_nce_loss(z, index.repeat(len(views)), self.cfg.simclr.temperature,
                             synthetic=synthetic,
                             synthetic_weight=self.cfg.data.synthetic_weight)
