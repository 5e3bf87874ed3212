"""What every SSL method shares: the backbone, the online evaluation, the optimiser and schedule,
and the NaN guard. A method adds its heads and `ssl_loss`."""

from __future__ import annotations

from typing import Any

import lightning as L
import timm.optim
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mixdiff.errors import NonFiniteLossError
from mixdiff.evaluate.knn import knn_accuracy
from mixdiff.models import build_backbone
from mixdiff.schedules import warmup_cosine

VAL, BANK = 0, 1  # the two evaluation loaders: val images, kNN bank of training images


class SSLMethod(L.LightningModule):
    """Base class. Batches are `(index, views, sources, labels)`; see `mixdiff.data.paired`."""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "num_classes": num_classes})
        self.cfg: DictConfig = OmegaConf.create(cfg)
        self.num_classes = num_classes
        self.backbone, self.feature_dim = build_backbone(self.cfg.model, self.cfg.data.image_size)
        self.channels_last = self.cfg.trainer.channels_last and \
            self.cfg.model.backbone.startswith("resnet")
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        # online probe: trained on detached features, so it never shapes the representation
        self.probe = nn.Linear(self.feature_dim, num_classes) if num_classes else None
        self._eval_store: dict[int, list[tuple[Tensor, Tensor]]] = {VAL: [], BANK: []}
        self.last_evaluated_epoch: int | None = None  # so metrics.csv never repeats stale values

    # --- what a method defines -------------------------------------------------------------
    def ssl_loss(self, views: list[Tensor], features: list[Tensor], index: Tensor) -> Tensor:
        raise NotImplementedError

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

    def training_step(self, batch, batch_idx: int) -> Tensor:
        index, views, sources, labels = batch
        features = self.encode_views(views)
        loss = self.ssl_loss(views, features, index)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}. The run stopped; its last good checkpoint is kept. Lower "
                "optim.lr, raise optim.warmup_epochs, set trainer.gradient_clip_val, or use "
                "trainer.precision=bf16-mixed instead of 16-mixed.")
        self.log("loss", loss, prog_bar=True, logger=False)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        if sources.shape[1] > 1:  # pairs whose second view is synthetic
            self.log("train/synthetic_fraction", (sources[:, 1] > 0).float().mean(),
                     on_step=False, on_epoch=True, sync_dist=True)
        return loss + self.probe_loss(features[0].detach(), labels)

    def probe_loss(self, features: Tensor, labels: Tensor) -> Tensor:
        labelled = labels >= 0
        if self.probe is None or not labelled.any():
            return torch.zeros((), device=features.device)
        logits = self.probe(features[labelled].float())
        loss = F.cross_entropy(logits, labels[labelled])
        self.log("train/online_probe_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/online_probe_top1", (logits.argmax(1) == labels[labelled]).float().mean(),
                 on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False,
                 on_epoch=True, reduce_fx="max")

    # --- online evaluation ----------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        features = self.encode(images)
        self._eval_store[dataloader_idx].append((features.half(), labels))

    def _collect(self, which: int) -> tuple[Tensor, Tensor]:
        store = self._eval_store[which]
        features = torch.cat([f for f, _ in store])
        labels = torch.cat([y for _, y in store])
        if self.trainer.world_size > 1:
            features = self.all_gather(features).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        return features, labels

    def on_validation_epoch_end(self) -> None:
        if not self._eval_store[VAL] or not self._eval_store[BANK] or self.probe is None:
            self._eval_store = {VAL: [], BANK: []}
            return
        self.last_evaluated_epoch = self.current_epoch
        val_features, val_labels = self._collect(VAL)
        bank_features, bank_labels = self._collect(BANK)
        self._eval_store = {VAL: [], BANK: []}
        logits = self.probe(val_features.float())
        self.log("online_probe/val_top1", (logits.argmax(1) == val_labels).float().mean(),
                 rank_zero_only=True)
        self.log("online_probe/val_loss", F.cross_entropy(logits, val_labels), rank_zero_only=True)
        self.log("online_knn/val_top1",
                 knn_accuracy(bank_features, bank_labels, val_features, val_labels,
                              self.num_classes, self.cfg.online_eval.knn_k,
                              self.cfg.online_eval.knn_temperature), rank_zero_only=True)

    # --- optimisation ---------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Weights with weight decay; biases and norms without (when so configured); the probe
        in a group of its own with its own learning rate."""
        optim = self.cfg.optim
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad or name.startswith("probe."):
                continue
            plain = optim.exclude_bias_and_norm and param.ndim <= 1
            (no_decay if plain else decay).append(param)
        groups = [{"params": decay, "weight_decay": optim.weight_decay},
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
        if optim.name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas))
        elif optim.name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=optim.momentum)
        else:  # LARS; timm skips the trust ratio for groups without weight decay
            optimizer = timm.optim.Lars(groups, lr=lr, momentum=optim.momentum)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = min(total, round(optim.warmup_epochs * steps_per_epoch))
        schedule = [(lambda _: 1.0) if g.pop("fixed_lr", False) else
                    (lambda step: warmup_cosine(step, warmup, total, optim.min_lr_ratio))
                    for g in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
