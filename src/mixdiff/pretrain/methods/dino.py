"""DINO (Caron et al., 2021): a student matches an EMA teacher across crops.

With MixDiff the teacher sees one real and one synthetic global crop (views 0 and 1); the student
sees both plus the local crops of each (`augment.local_crops_real` / `local_crops_synthetic`). In
extra mode the teacher sees two real global crops and the student also a global crop of each twin
(`data.synthetic_views`): the twin is a further positive that the teacher's targets never come from.

As in the reference code: the teacher is a copy without stochastic depth whose parameters follow
the student's by EMA (its BatchNorm statistics, in a ResNet, are its own: it normalises with batch
statistics while training); each student parameter's gradient is clipped to norm `dino.clip_grad`;
the last layer is frozen for the first `dino.freeze_last_layer_epochs`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mixdiff.pretrain.losses import DINOLoss
from mixdiff.pretrain.methods.base import SSLMethod
from mixdiff.models import DINOHead, build_backbone
from mixdiff.models.one_window import one_window_convs
from mixdiff.schedules import cosine


def clip_each_gradient(parameters, max_norm: float) -> None:
    """DINO's `clip_gradients`: scale each parameter's gradient down to norm `max_norm`."""
    for param in parameters:
        if param.grad is not None:
            norm = param.grad.detach().norm(2)
            param.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


class DINO(SSLMethod):
    def __init__(self, cfg, num_classes: int):
        super().__init__(cfg, num_classes)
        args = self.cfg.dino
        self.head = DINOHead(self.feature_dim, args.proj_hidden_dim, args.bottleneck_dim,
                             args.out_dim, args.norm_last_layer)
        self.teacher_backbone, _ = build_backbone(self.cfg.model, self.cfg.data.image_size)
        self.teacher_backbone.load_state_dict(self.backbone.state_dict())
        one_window_convs(self.teacher_backbone)
        if self.channels_last:
            self.teacher_backbone.to(memory_format=torch.channels_last)
        self.teacher_head = DINOHead(self.feature_dim, args.proj_hidden_dim, args.bottleneck_dim,
                                     args.out_dim, args.norm_last_layer)
        self.teacher_head.load_state_dict(self.head.state_dict())
        for param in [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]:
            param.requires_grad = False
        self.criterion = DINOLoss(args.out_dim, args.student_temperature, args.teacher_temperature,
                                  args.warmup_teacher_temperature,
                                  args.warmup_teacher_temperature_epochs, args.center_momentum)

    @property
    def knn_backbone(self) -> nn.Module:
        return self.teacher_backbone

    def ssl_loss(self, views: list[Tensor], features: list[Tensor], index: Tensor,
                 sources: Tensor) -> Tensor:
        """The teacher sees the first two views (the global crops; real ones in extra mode,
        where the twins' crops follow them and are the student's alone); the student sees every
        crop, and a twin's crop weighs data.synthetic_weight (lambda) in the mean over the
        (teacher, student) pairs."""
        student = [self.head(f) for f in features]
        with torch.no_grad():
            teacher_features = self.encode_views(views[:2], self.teacher_backbone)
            teacher = [self.teacher_head(f) for f in teacher_features]
        weights = [self.pair_weight(v) for v in range(len(views))]
        return self.criterion(student, teacher, self.epochs_done(), weights)

    def momentum(self) -> float:
        """Teacher EMA momentum: cosine from `momentum_teacher` to 1 over the run."""
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return cosine(self.global_step, total, self.cfg.dino.momentum_teacher, 1.0)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        """DINO's per-parameter clip on the student (never the probe), then the global clip if
        `trainer.gradient_clip_val` is also set."""
        if self.cfg.dino.clip_grad:
            clip_each_gradient(self.ssl_parameters(), self.cfg.dino.clip_grad)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_after_backward(self) -> None:
        if self.current_epoch < self.cfg.dino.freeze_last_layer_epochs:
            for param in self.head.last_layer.parameters():
                param.grad = None

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimiser step, then the teacher's EMA: inside the step, so a checkpoint saved at
        any batch boundary holds a teacher that matches its student."""
        super().optimizer_step(*args, **kwargs)
        self.update_teacher()

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA of the parameters only: the teacher's BatchNorm keeps statistics of its own."""
        m = self.momentum()
        for student, teacher in ((self.backbone, self.teacher_backbone),
                                 (self.head, self.teacher_head)):
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
