"""`mixdiff pretrain`: a run directory, its resolved config, resume, and the Lightning Trainer.

RUN_DIR/
  config.yaml          the resolved config (a re-run must match it, but for RESUMABLE_KEYS)
  data.json            what was trained and evaluated on: split sizes, classes, val source
  metrics.csv          one row per epoch (train/loss, train/synthetic_fraction, online_* ...)
  checkpoints/last.ckpt
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from mixdiff.config import differing_keys, to_yaml
from mixdiff.data.datamodule import MixDiffDataModule
from mixdiff.errors import ConfigError, RunDirError
from mixdiff.io import atomic_open, atomic_write_text
from mixdiff.methods import METHODS

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never truncates last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_open(path, "wb") as handle:
            torch.save(checkpoint, handle)


class EpochMetricsCSV(Callback):
    """RUN_DIR/metrics.csv: one row per epoch of every epoch-level metric.

    A resumed run rewrites the rows of epochs it repeats, so each epoch appears once.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        evaluated = getattr(module, "last_evaluated_epoch", None) == trainer.current_epoch
        for key, value in sorted(trainer.callback_metrics.items()):
            if "/" not in key:  # namespaced metrics only (not the progress-bar copy of the loss)
                continue
            if key.startswith("online_") and not evaluated:  # stale: from an earlier epoch
                continue
            row[key] = round(float(value), 6)
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())


def prepare_run_dir(cfg: DictConfig, out: Path) -> Path | None:
    """Write RUN_DIR/config.yaml, or check it against the saved one. Returns the checkpoint to
    resume from, if any."""
    config_path, last = out / "config.yaml", out / "checkpoints" / "last.ckpt"
    if config_path.exists():
        saved = OmegaConf.load(config_path)
        changed = differing_keys(saved, cfg)
        if changed:
            details = "; ".join(f"{k}: {OmegaConf.select(saved, k)!r} -> "
                                f"{OmegaConf.select(cfg, k)!r}" for k in changed[:10])
            raise RunDirError(f"{out} holds a run with a different config ({details}). Use another "
                              "--out, or the saved config.yaml to resume it.")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_path, to_yaml(cfg))  # refreshed: resumable keys may have changed
    return last if last.exists() else None


def load_initial_weights(model: L.LightningModule, checkpoint: str) -> None:
    """`init_from`: copy the weights (not optimiser or epoch) of another run's checkpoint."""
    if not Path(checkpoint).is_file():
        raise ConfigError(f"config key `init_from`: checkpoint not found: {checkpoint}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in usable):
        raise ConfigError(f"config key `init_from`: {checkpoint} has no backbone weights that fit "
                          f"model.backbone={model.cfg.model.backbone}")
    model.load_state_dict(usable, strict=False)
    log.info("init_from %s: loaded %d of %d tensors", checkpoint, len(usable), len(own))


def build_trainer(cfg: DictConfig, out: Path) -> L.Trainer:
    t = cfg.trainer
    limit = t.limit_train_batches
    callbacks: list[Callback] = [
        EpochMetricsCSV(out / "metrics.csv"),
        ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0,
                        save_on_train_epoch_end=True),
    ]
    if t.progress_bar:
        callbacks.append(RichProgressBar())
    return L.Trainer(
        default_root_dir=out, max_epochs=t.max_epochs, precision=t.precision,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        sync_batchnorm=t.sync_batchnorm, gradient_clip_val=t.gradient_clip_val,
        limit_train_batches=int(limit) if limit > 1 else limit,
        log_every_n_steps=t.log_every_n_steps, check_val_every_n_epoch=cfg.online_eval.every_n_epochs,
        num_sanity_val_steps=0, logger=False, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()], enable_progress_bar=t.progress_bar,
        enable_model_summary=False)


def pretrain(cfg: DictConfig, out: str | Path) -> Path:
    """Pre-train (or resume) the run in `out`; returns the run directory."""
    out = Path(out)
    resume_from = prepare_run_dir(cfg, out)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    datamodule = MixDiffDataModule(cfg)
    datamodule.setup()
    datamodule.write_summary(out / "data.json")
    model = METHODS[cfg.method](OmegaConf.to_container(cfg, resolve=True), datamodule.num_classes)
    if cfg.init_from and resume_from is None:
        load_initial_weights(model, cfg.init_from)
    torch.set_float32_matmul_precision("high")
    trainer = build_trainer(cfg, out)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    return out

