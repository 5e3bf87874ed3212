"""DINO (Caron et al., 2021): a student matches an EMA teacher across crops.

With MixDiff the teacher sees one real and one synthetic global crop (views 0 and 1); the student
sees both plus the local crops of each (`augment.local_crops_real` / `local_crops_synthetic`).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from mixdiff.losses import DINOLoss
from mixdiff.methods.base import SSLMethod
from mixdiff.models import DINOHead


class DINO(SSLMethod):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        args = self.cfg.dino
        self.head = DINOHead(self.feature_dim, args.proj_hidden_dim, args.bottleneck_dim,
                             args.out_dim, args.norm_last_layer)
        self.teacher_backbone = copy.deepcopy(self.backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for param in [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]:
            param.requires_grad = False
        self.criterion = DINOLoss(args.out_dim, args.student_temperature, args.teacher_temperature,
                                  args.warmup_teacher_temperature,
                                  args.warmup_teacher_temperature_epochs, args.center_momentum)

    def ssl_loss(self, views: list[Tensor], features: list[Tensor], index: Tensor) -> Tensor:
        globals_ = [i for i, v in enumerate(views) if v.shape[-2:] == views[0].shape[-2:]][:2]
        student = [self.head(f) for f in features]
        with torch.no_grad():
            teacher_features = self.encode_views([views[i] for i in globals_],
                                                 self.teacher_backbone)
            teacher = [self.teacher_head(f) for f in teacher_features]
        epoch = self.global_step / max(1, self.trainer.num_training_batches)
        return self.criterion(student, teacher, epoch)

    def momentum(self) -> float:
        """Teacher EMA momentum: cosine from `momentum_teacher` to 1 over the run."""
        base = self.cfg.dino.momentum_teacher
        progress = self.global_step / max(1, self.trainer.estimated_stepping_batches)
        return 1 - (1 - base) * (math.cos(math.pi * min(1.0, progress)) + 1) / 2

    def on_after_backward(self) -> None:
        if self.current_epoch < self.cfg.dino.freeze_last_layer_epochs:
            for param in self.head.last_layer.parameters():
                param.grad = None

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        m = self.momentum()
        for student, teacher in ((self.backbone, self.teacher_backbone),
                                 (self.head, self.teacher_head)):
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            for bs, bt in zip(student.buffers(), teacher.buffers()):
                bt.copy_(bs)

    def train(self, mode: bool = True) -> "DINO":
        """The teacher always runs in eval mode: its BatchNorm (ResNet) uses the copied statistics."""
        super().train(mode)
        self.teacher_backbone.eval()
        self.teacher_head.eval()
        return self

