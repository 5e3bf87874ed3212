"""Barlow Twins (Zbontar et al., 2021): decorrelate the projections of two views."""

from __future__ import annotations

import itertools

from torch import Tensor

from mixdiff.pretrain.losses import barlow_twins_loss
from mixdiff.pretrain.methods.base import SSLMethod
from mixdiff.models import projection_mlp


class BarlowTwins(SSLMethod):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        args = self.cfg.barlow_twins
        self.projector = projection_mlp(self.feature_dim, args.proj_hidden_dim,
                                        args.proj_output_dim, layers=args.proj_layers)

    def ssl_loss(self, views: list[Tensor], features: list[Tensor], index: Tensor,
                 sources: Tensor) -> Tensor:
        """The weighted mean of the loss over every pair of views (one pair in the two-view
        recipes). Row b of every view is sample b, so the pairing by index is the row order.

        In extra mode a pair with a twin's view in it has weight data.synthetic_weight (lambda),
        the real pair weight 1. Barlow Twins' loss is a statistic of the whole batch (its
        cross-correlation), so lambda weights a pair of view positions, not single rows: a
        sample whose twin was filtered out sits in the twin's position with a real view."""
        args = self.cfg.barlow_twins
        z = [self.projector(f) for f in features]
        pairs = list(itertools.combinations(range(len(z)), 2))
        weights = [self.pair_weight(i, j) for i, j in pairs]
        loss = sum(w * barlow_twins_loss(z[i], z[j], lambd=args.lambd)
                   for w, (i, j) in zip(weights, pairs)) / sum(weights)
        return args.scale_loss * loss
