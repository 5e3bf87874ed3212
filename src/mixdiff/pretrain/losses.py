"""The SSL losses, as pure functions (and one small module for DINO's running centre).

Distributed behaviour is explicit and safe: with `gather_distributed=True` and an initialised
process group, NT-Xent gathers embeddings from every rank with a gradient-carrying all-gather, and
Barlow Twins all-reduces its batch statistics and cross-correlation. Without a process group nothing
distributed is called. In both cases the gradient DDP applies (the mean over ranks of each rank's
gradient) equals the gradient of the same loss computed by one process on the whole global batch.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.nn import functional as dist_fn


LossFn = TypeVar("LossFn", bound=Callable)


def full_precision(loss: LossFn) -> LossFn:
    """Compute `loss` in fp32 under any autocast. Autocast picks a matmul's dtype whatever its
    inputs' dtype, so the `.float()` of a loss's inputs alone would leave NT-Xent's logits and
    Barlow Twins' cross-correlation in bf16 under bf16-mixed (a logit at temperature 0.1 off by up
    to ~0.04; a correlation sums thousands of products). The autocast of the device that the first
    tensor argument lives on is turned off inside."""

    @functools.wraps(loss)
    def in_fp32(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)] or \
            [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            return loss(*args, **kwargs)

    return in_fp32  # type: ignore[return-value]


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(x: Tensor) -> Tensor:
    """Concatenate `x` from every rank along dim 0; gradients flow back to each rank's part."""
    if not distributed():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def _all_reduce_sum(x: Tensor) -> Tensor:
    return dist_fn.all_reduce(x, op=dist.ReduceOp.SUM) if distributed() else x


@full_precision
def info_nce_loss(z: Tensor, indexes: Tensor, temperature: float = 0.5,
                  gather_distributed: bool = True, synthetic: Tensor | None = None,
                  synthetic_weight: float = 1.0) -> Tensor:
    """NT-Xent over any number of views: rows with the same index are positives of each other.

    z: (N, D) embeddings of all views of the local batch; indexes: (N,) sample indices. For each
    row, loss = -log(sum over positives of w * exp(sim / T) / sum over all other rows of
    exp(sim / T)), averaged over the rows of the global batch. Two views of B distinct samples
    give SimCLR's loss. `synthetic` (N,) marks views of synthetic twins: a positive pair with one
    in it is weighted `synthetic_weight` (lambda; w = 1 for real pairs), so lambda = 1 is the plain
    multi-positive NT-Xent and a smaller lambda lets a twin pull less than a real view.
    """
    if not synthetic_weight > 0:
        raise ValueError(f"synthetic_weight must be positive, not {synthetic_weight}")
    z = F.normalize(z.float(), dim=1)
    synthetic = torch.zeros_like(indexes, dtype=torch.bool) if synthetic is None else synthetic
    if gather_distributed and distributed():
        z_all, idx_all = gather(z), torch.cat(dist_fn.all_gather(indexes))
        synthetic_all = torch.cat(dist_fn.all_gather(synthetic.to(torch.uint8))).bool()
        offset = dist.get_rank() * z.shape[0]  # equal local batches: drop_last in training
    else:
        z_all, idx_all, synthetic_all, offset = z, indexes, synthetic, 0
    logits = z @ z_all.T / temperature
    rows = torch.arange(z.shape[0], device=z.device)
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[rows, rows + offset] = False
    positive = (indexes[:, None] == idx_all[None, :]) & not_self
    if not positive.any(dim=1).all():
        raise ValueError("info_nce_loss: a row has no positive (each index needs >= 2 views)")
    logits = logits.masked_fill(~not_self, float("-inf"))
    with_twin = synthetic[:, None] | synthetic_all[None, :]
    log_weight = with_twin * math.log(synthetic_weight)  # 0 for real pairs
    log_pos = torch.logsumexp((logits + log_weight).masked_fill(~positive, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - log_pos).mean()


def nt_xent_loss(z_a: Tensor, z_b: Tensor, temperature: float = 0.5,
                 gather_distributed: bool = True) -> Tensor:
    """SimCLR's NT-Xent for two views: row i of z_a and row i of z_b are the positive pair."""
    index = torch.arange(z_a.shape[0], device=z_a.device)
    if gather_distributed and distributed():  # make the pair ids unique across ranks
        index = index + (dist.get_rank() << 32)
    return info_nce_loss(torch.cat([z_a, z_b]), torch.cat([index, index]), temperature,
                         gather_distributed)


@full_precision
def barlow_twins_loss(z_a: Tensor, z_b: Tensor, lambd: float = 0.005,
                      gather_distributed: bool = True, eps: float = 1e-5) -> Tensor:
    """Barlow Twins: sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2, where C is the
    cross-correlation of the batch-standardised embeddings over the (global) batch."""
    z_a, z_b = z_a.float(), z_b.float()
    reduce = _all_reduce_sum if gather_distributed else (lambda x: x)
    n = reduce(torch.tensor(float(z_a.shape[0]), device=z_a.device))

    def standardise(z: Tensor) -> Tensor:
        mean = reduce(z.sum(0)) / n
        var = reduce(((z - mean) ** 2).sum(0)) / n  # biased, as BatchNorm1d(affine=False) in training
        return (z - mean) / torch.sqrt(var + eps)

    c = reduce(standardise(z_a).T @ standardise(z_b)) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


class DINOLoss(nn.Module):
    """DINO's cross-entropy between the sharpened, centred teacher output on the global crops and
    the student output on every other crop, with the centre kept as an EMA of teacher outputs.

    The teacher temperature warms up linearly from `warmup_teacher_temperature` to
    `teacher_temperature` over `warmup_epochs`.
    """

    def __init__(self, out_dim: int, student_temperature: float = 0.1,
                 teacher_temperature: float = 0.04, warmup_teacher_temperature: float = 0.04,
                 warmup_epochs: int = 0, center_momentum: float = 0.9,
                 gather_distributed: bool = True):
        super().__init__()
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.warmup_epochs = warmup_epochs
        self.center_momentum = center_momentum
        self.gather_distributed = gather_distributed
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature_at(self, epoch: float) -> float:
        if epoch >= self.warmup_epochs:
            return self.teacher_temperature
        step = (self.teacher_temperature - self.warmup_teacher_temperature) / self.warmup_epochs
        return self.warmup_teacher_temperature + step * epoch

    @full_precision
    def forward(self, student: list[Tensor], teacher: list[Tensor], epoch: float = 0.0,
                student_weights: list[float] | None = None) -> Tensor:
        """student: one (B, K) output per crop; teacher: one (B, K) output per global crop, the
        global crops being the first `len(teacher)` student crops. Row b of each is sample b.
        The loss is the mean over (teacher, student) crop pairs, weighted by the student crop's
        weight in `student_weights` (default 1 each)."""
        weights = student_weights or [1.0] * len(student)
        temperature = self.teacher_temperature_at(epoch)
        targets = [F.softmax((t.float() - self.center) / temperature, dim=-1).detach()
                   for t in teacher]
        log_probs = [F.log_softmax(s.float() / self.student_temperature, dim=-1) for s in student]
        total, weight = 0.0, 0.0
        for ti, target in enumerate(targets):
            for si, log_prob in enumerate(log_probs):
                if si == ti:  # the same crop: no prediction task
                    continue
                total = total + weights[si] * (-target * log_prob).sum(-1).mean()
                weight += weights[si]
        self.update_center(torch.cat(teacher))
        return total / weight

    @torch.no_grad()
    def update_center(self, teacher: Tensor) -> None:
        total = teacher.float().sum(0, keepdim=True)
        count = torch.tensor(float(teacher.shape[0]), device=teacher.device)
        if self.gather_distributed and distributed():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(total / count * (1 - self.center_momentum))
