"""What every SSL method shares: the backbone, the online evaluation, the optimiser and its
schedules, gradient clipping, and the NaN guard. A method adds its heads and `ssl_loss`."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import lightning as L
import timm.optim
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mixdiff.pretrain.callbacks import last_batch_of_epoch
from mixdiff.errors import NonFiniteLossError
from mixdiff.knn import knn_accuracy
from mixdiff.pretrain.input.views import build_views, twin_positions
from mixdiff.pretrain.methods.epoch_means import EpochMeans
from mixdiff.models import build_backbone
from mixdiff.models.one_window import one_window_convs
from mixdiff.runs import Metric
from mixdiff.schedules import cosine, warmup_cosine

VAL, BANK = 0, 1  # the two evaluation loaders: val images, kNN bank of training images
EPOCH_MEANS = "mixdiff_epoch_means"  # the checkpoint's key for the partial epoch's sums

# optim.name -> (parameter groups, lr, optim config) -> optimiser. LARS (timm) skips its trust
# ratio for groups without weight decay (biases and norms).
def _adamw(groups: list[dict], lr: float, o: DictConfig) -> torch.optim.Optimizer:
    # on the CPU the fused kernel: 6 ms a ResNet-18 step instead of 35 (this project's 2-core
    # CPU; single-tensor is PyTorch's CPU default). Elsewhere PyTorch's default (foreach).
    on_cpu = groups[0]["params"][0].device.type == "cpu"
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas), fused=True if on_cpu else None)


OPTIMIZERS: dict[str, Callable[[list[dict], float, DictConfig], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "sgd": lambda groups, lr, o: torch.optim.SGD(groups, lr=lr, momentum=o.momentum),
    "lars": lambda groups, lr, o: timm.optim.Lars(groups, lr=lr, momentum=o.momentum),
}


class SSLMethod(L.LightningModule):
    """Base class. Batches are `(index, views, sources, labels)`; see
    `mixdiff.pretrain.input.paired`."""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "num_classes": num_classes})
        self.cfg: DictConfig = OmegaConf.create(cfg)
        self.num_classes = num_classes
        self.backbone, self.feature_dim = build_backbone(self.cfg.model, self.cfg.data.image_size,
                                                         self.cfg.model.drop_path_rate)
        one_window_convs(self.backbone)  # small images on the CPU: a step ~1.8x faster, same math
        self.channels_last = self.cfg.trainer.channels_last and \
            self.cfg.model.backbone.startswith("resnet")
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # online probe: trained on detached features, so it never shapes the representation
        self.probe = nn.Linear(self.feature_dim, num_classes) if num_classes else None
        self._eval_store: dict[int, list[tuple[Tensor, ...]]] = {VAL: [], BANK: []}
        self.last_evaluated_epoch: int | None = None  # so metrics.csv never repeats stale values
        self.epoch_means = EpochMeans()  # the training metrics' epoch means, in every checkpoint
        self.twin_views = twin_positions(build_views(self.cfg))  # extra mode's added positives

    # --- what a method defines -------------------------------------------------------------
    def ssl_loss(self, views: list[Tensor], features: list[Tensor], index: Tensor,
                 sources: Tensor) -> Tensor:
        """The loss of one batch: `features[v]` of `views[v]` (B rows each, row b is sample
        `index[b]`); `sources` (B, V) says what each view was cut from (0: the real image)."""
        raise NotImplementedError

    def pair_weight(self, *views: int) -> float:
        """data.synthetic_weight for a pair of view positions that includes a twin's view
        (data.mode=extra), else 1: for losses that weight whole views, not rows."""
        return self.cfg.data.synthetic_weight if set(views) & set(self.twin_views) else 1.0

    @property
    def knn_backbone(self) -> nn.Module:
        """The network the online kNN scores (DINO: the teacher, as in DINO's own evaluation)."""
        return self.backbone

    # --- shared machinery -----------------------------------------------------------------
    def encode(self, images: Tensor, backbone: nn.Module | None = None) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (backbone or self.backbone)(images)

    def encode_views(self, views: list[Tensor], backbone: nn.Module | None = None) -> list[Tensor]:
        """Features of each view, with one forward pass per run of same-sized views, so that
        BatchNorm normalises real and synthetic views together (as in the authors' code)."""
        features: list[Tensor] = []
        start = 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            encoded = self.encode(torch.cat(views[start:end]), backbone)
            features.extend(encoded.chunk(end - start))
            start = end
        return features

    def epochs_done(self) -> float:
        """Training progress in (fractional) epochs; 0 outside a Trainer (benchmarks, tests)."""
        if self._trainer is None:
            return 0.0
        return self.global_step / max(1, self.trainer.num_training_batches)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        index, views, sources, labels = batch
        features = self.encode_views(views)
        loss = self.ssl_loss(views, features, index, sources)
        finite = bool(torch.isfinite(loss))
        if self._trainer is not None:  # every rank stops together, or DDP would hang
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise NonFiniteLossError(f"the training loss became {loss.item()} at epoch "
                                     f"{self.current_epoch}, step {self.global_step}")
        self.log("loss", loss, prog_bar=True, logger=False)
        self.epoch_means.add(Metric.TRAIN_LOSS, loss)
        if sources.shape[1] > 1:  # partner views (extra mode: twin views) that are synthetic
            partners = sources[:, self.twin_views or [1]]
            self.epoch_means.add(Metric.SYNTHETIC_FRACTION, (partners > 0).float().mean())
        return loss + self.probe_loss(features[0].detach(), labels)

    def probe_loss(self, features: Tensor, labels: Tensor) -> Tensor:
        labelled = labels >= 0
        if self.probe is None or not labelled.any():
            return torch.zeros((), device=features.device)
        logits = self.probe(self.probe_input(features[labelled]))
        loss = F.cross_entropy(logits, labels[labelled])
        self.epoch_means.add(Metric.TRAIN_PROBE_LOSS, loss)
        self.epoch_means.add(Metric.TRAIN_PROBE_TOP1,
                             (logits.argmax(1) == labels[labelled]).float().mean())
        return loss

    def probe_input(self, features: Tensor) -> Tensor:
        """Features in the probe's own dtype: fp32 under autocast (bf16 features), fp64 under
        64-true, whose weights Lightning has cast to fp64."""
        return features.to(self.probe.weight.dtype)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        optimizer = self.trainer.optimizers[0]
        decay = [g for g in optimizer.param_groups if g.get("scheduled_weight_decay")]
        for group in decay:
            group["weight_decay"] = self.weight_decay_at(self.global_step)
        self.epoch_means.add(Metric.LR, optimizer.param_groups[0]["lr"])
        if decay:
            self.epoch_means.add(Metric.WEIGHT_DECAY, decay[0]["weight_decay"])

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """After the epoch's last batch: its means, for metrics.csv and the logger (each rank's
        mean, averaged over ranks as Lightning's sync_dist does, on the module's device)."""
        if last_batch_of_epoch(self.trainer):
            for name, mean in self.epoch_means.means(self.device).items():
                self.log(name, mean, on_step=False, on_epoch=True, sync_dist=True)
            self.epoch_means.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[EPOCH_MEANS] = self.epoch_means.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if EPOCH_MEANS in checkpoint:  # checkpoints from before it was kept start from none
            self.epoch_means.load_state_dict(checkpoint[EPOCH_MEANS])

    def weight_decay_at(self, step: int) -> float:
        """optim.weight_decay, or a cosine from it to optim.weight_decay_end over the run (DINO)."""
        optim = self.cfg.optim
        if optim.weight_decay_end is None:
            return optim.weight_decay
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return cosine(step, total, optim.weight_decay, optim.weight_decay_end)

    # --- gradient clipping ------------------------------------------------------------------
    def ssl_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the SSL loss trains: everything but the online probe."""
        return (p for name, p in self.named_parameters()
                if p.requires_grad and not name.startswith("probe."))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        """`trainer.gradient_clip_val` clips the SSL parameters only: the online probe's gradients
        must not change how much the representation is clipped."""
        if not gradient_clip_val:
            return
        params = [p for p in self.ssl_parameters() if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    # --- online evaluation ----------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        knn_net = self.knn_backbone
        if dataloader_idx == VAL:
            features = self.encode(images)
            knn = features if knn_net is self.backbone else self.encode(images, knn_net)
            self._eval_store[VAL].append((features.half(), knn.half(), labels))
        else:
            self._eval_store[BANK].append((self.encode(images, knn_net).half(), labels))

    def _collect(self, which: int) -> list[Tensor]:
        store = self._eval_store[which]
        columns = [torch.cat(column) for column in zip(*store)]
        if self.trainer.world_size > 1:
            columns = [self.all_gather(c).flatten(0, 1) for c in columns]
        return columns

    def on_validation_epoch_end(self) -> None:
        if not self._eval_store[VAL] or not self._eval_store[BANK] or self.probe is None:
            self._eval_store = {VAL: [], BANK: []}
            return
        self.last_evaluated_epoch = self.current_epoch
        val_features, val_knn, val_labels = self._collect(VAL)
        bank_features, bank_labels = self._collect(BANK)
        self._eval_store = {VAL: [], BANK: []}
        logits = self.probe(self.probe_input(val_features))
        self.log(Metric.PROBE_VAL_TOP1, (logits.argmax(1) == val_labels).float().mean(),
                 rank_zero_only=True)
        self.log(Metric.PROBE_VAL_LOSS, F.cross_entropy(logits, val_labels), rank_zero_only=True)
        self.log(Metric.KNN_VAL_TOP1,
                 knn_accuracy(bank_features, bank_labels, val_knn, val_labels,
                              self.num_classes, self.cfg.online_eval.knn_k,
                              self.cfg.online_eval.knn_temperature), rank_zero_only=True)

    # --- optimisation ---------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Weights with weight decay (scheduled when optim.weight_decay_end is set); biases and
        norms without (when so configured); the probe in a group of its own with its own lr."""
        optim = self.cfg.optim
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad or name.startswith("probe."):
                continue
            plain = optim.exclude_bias_and_norm and param.ndim <= 1
            (no_decay if plain else decay).append(param)
        groups = [{"params": decay, "weight_decay": optim.weight_decay,
                   "scheduled_weight_decay": optim.weight_decay_end is not None},
                  {"params": no_decay, "weight_decay": 0.0}]
        if self.probe is not None:
            groups.append({"params": list(self.probe.parameters()), "weight_decay": 0.0,
                           "lr": optim.probe_lr, "fixed_lr": True})
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        optim = self.cfg.optim
        world = self.trainer.world_size if self._trainer is not None else 1
        lr = optim.lr * self.cfg.trainer.batch_size * world / 256
        groups = self.parameter_groups()
        for group in groups:
            group.setdefault("lr", lr)
        optimizer = OPTIMIZERS[optim.name](groups, lr, optim)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = min(total, round(optim.warmup_epochs * steps_per_epoch))
        schedule = [(lambda _: 1.0) if g.pop("fixed_lr", False) else
                    (lambda step: warmup_cosine(step, warmup, total, optim.min_lr_ratio))
                    for g in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
