"""`mixdiff pretrain`: check the inputs, then the run folder, resume, and the Lightning Trainer.

The run folder (`mixdiff.runs.RunDir`) is written only once every input has been checked (the
config, the data, every image's header, the hardware, `init_from`), so a failed start never leaves
a folder that refuses the corrected command (nor does a start that saved no checkpoint). One
process at a time writes a run folder (`mixdiff.lock`). See `pretrain.callbacks` for what a kill
loses.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from mixdiff.pretrain.callbacks import EpochSummary, ProgressBar, RunCheckpoint
from mixdiff.config import differing_keys, to_yaml
from mixdiff.data.tree import fingerprint_changes
from mixdiff.pretrain.input.datamodule import MixDiffDataModule
from mixdiff.errors import ConfigError, NonFiniteLossError, RunDirError, UnreadableImageError
from mixdiff.io import atomic_open, atomic_write_text, remove_stale_temporaries
from mixdiff.lock import exclusive, launched_rank_zero
from mixdiff.pretrain.loggers import build_logger
from mixdiff.pretrain.methods import METHODS
from mixdiff.runs import FINGERPRINTS, RunDir, listed, read_checkpoint, resumable_checkpoint, \
    state_mismatches

log = logging.getLogger(__name__)

GPU_ACCELERATORS = ("gpu", "cuda")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never truncates last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_open(path, "wb") as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """The resume's checkpoint (or a file Lightning saved itself), or one line saying what
        is wrong with it."""
        return read_checkpoint(path, lightning=False)


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter and known-harmless library warnings out of the user's
    way; real warnings and errors still show."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for message in (r".*does not have many workers.*", r".*LeafSpec.*is deprecated.*",
                    r".*litlogger.*", r".*smaller than the logging interval.*",
                    # the datamodule resumes its sampler mid-epoch itself (its state_dict)
                    r".*your dataloader is not resumable.*"):
        warnings.filterwarnings("ignore", message=message)


def resolve_hardware(cfg: DictConfig) -> DictConfig:
    """The config with `trainer.devices` as a device count (or list) and `trainer.sync_batchnorm`
    decided, so that config.yaml records what ran and a resume on other hardware is caught
    (`devices: auto` on 4 GPUs and on 2 would otherwise look the same)."""
    t = cfg.trainer
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if t.accelerator in GPU_ACCELERATORS and not gpus:
        raise ConfigError(f"config key `trainer.accelerator` = {t.accelerator!r}, but no CUDA GPU "
                          "is visible here (torch.cuda.is_available() is False): use "
                          "trainer.accelerator=cpu (or auto)")
    on_gpu = gpus > 0 and t.accelerator in ("auto", *GPU_ACCELERATORS)
    devices = t.devices
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        devices = gpus if on_gpu else 1
    count = len(devices) if OmegaConf.is_list(devices) or isinstance(devices, list) else devices
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"config key `trainer.devices` = {t.devices!r}: give a number of "
                          "devices, a list of device indices, or auto")
    if on_gpu and count > gpus:
        raise ConfigError(f"config key `trainer.devices` = {t.devices!r}, but only {gpus} GPU(s) "
                          "are visible here")
    several = count * t.num_nodes > 1
    if t.sync_batchnorm and several and not on_gpu:
        raise ConfigError("config key `trainer.sync_batchnorm` = true needs GPUs (PyTorch's "
                          "SyncBatchNorm runs only on CUDA); set it to false on the CPU")
    # auto: BatchNorm over the global batch, as the authors' code does when distributed
    sync = t.sync_batchnorm if t.sync_batchnorm is not None else several and on_gpu
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["trainer"].update(devices=devices, sync_batchnorm=sync,
                               precision=resolve_precision(t.precision, on_gpu))
    resolved = OmegaConf.create(resolved)
    OmegaConf.set_readonly(resolved, True)
    return resolved


def native_bf16(on_gpu: bool) -> bool:
    """Whether bf16 arithmetic runs in hardware here (Ampere+ GPUs; CPUs with AVX512-BF16/AMX).
    Elsewhere PyTorch emulates it, several times slower than fp32."""
    if on_gpu:
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# Precisions the config accepts (config.PRECISIONS) that cannot pre-train as asked: why, and what
# to use instead. bf16-true casts the weights themselves to bf16 (Lightning's HalfPrecision): with
# 8 significant bits, an update smaller than ~0.2% of a weight rounds to nothing, and a teacher EMA
# step at momentum 0.996 moves about one weight in ten.
REFUSED_PRECISIONS = {
    "bf16-true": "it keeps the weights themselves in bf16, whose 8 significant bits round away "
                 "small updates (the warm-up's, the cosine schedule's tail, most of DINO's "
                 "teacher EMA); use trainer.precision=bf16-mixed (bf16 arithmetic, fp32 weights)",
}


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """`auto` -> bf16-mixed where bf16 is native, else 16-mixed on a GPU and 32-true on a CPU. A
    precision that cannot pre-train (REFUSED_PRECISIONS) is refused here, before any work."""
    if precision in REFUSED_PRECISIONS:
        raise ConfigError(f"config key `trainer.precision` = {precision!r}: "
                          f"{REFUSED_PRECISIONS[precision]}")
    if precision == "auto":
        return "bf16-mixed" if native_bf16(on_gpu) else "16-mixed" if on_gpu else "32-true"
    if precision.startswith("bf16") and not native_bf16(on_gpu):
        log.warning("trainer.precision=%s: this %s has no native bf16, so it is emulated and "
                    "several times slower than 32-true; trainer.precision=auto picks the fast "
                    "one", precision, "GPU" if on_gpu else "CPU")
    return precision


def resume_point(cfg: DictConfig, run: RunDir) -> Path | None:
    """The checkpoint to resume from, after checking that `run` holds this config (or nothing).
    Writes nothing."""
    if not run.config.exists():
        return None
    saved = run.load_config()
    changed = differing_keys(saved, cfg)
    if changed and not run.last_checkpoint.exists():
        # nothing was saved (a start that failed, or stopped before its first checkpoint): no
        # run to protect, so the corrected command starts afresh here
        log.info("%s: no checkpoint was saved with its old config; starting afresh with this one",
                 run.root)
        return None
    if changed:
        details = "; ".join(f"{k}: {OmegaConf.select(saved, k)!r} -> "
                            f"{OmegaConf.select(cfg, k)!r}" for k in changed[:10])
        raise RunDirError(f"{run.root} holds a run with a different config ({details}). Use "
                          "another --out, or the saved config.yaml to resume it.")
    return run.last_checkpoint if run.last_checkpoint.exists() else None


def refuse_other_data(run: RunDir, summary: dict) -> None:
    """A resumed run trains on the images it started with (data.json's fingerprints of its
    trees): images added or removed since are refused, before anything is rewritten (a removed
    class would not even fit the saved model). A run whose data.json keeps no fingerprint (an
    older mixdiff's, or none left) is unknown, not changed: said, and resumed; a damaged one is
    refused, not taken for unknown."""
    saved = run.read_fingerprints("restore it, or remove it to resume without the check that "
                                  "the run goes on with the images it started with")
    unknown = [key for key in summary[FINGERPRINTS] if key not in saved]
    if unknown:
        log.warning("%s keeps no fingerprint of %s (it is missing, or written before mixdiff "
                    "kept them): whether the run resumes on the images it started with is "
                    "unknown", run.data_summary, ", ".join(unknown))
    changes = [f"{key}: {change}" for key, now in summary[FINGERPRINTS].items()
               if key in saved and (change := fingerprint_changes(saved[key], now))]
    if changes:
        raise RunDirError(f"{run.root} was trained on other images than its trees hold now ("
                          f"{'; '.join(changes)}). Restore them to resume it, or train on these "
                          f"in another --out (init_from={run.last_checkpoint} starts from its "
                          "weights)")


def refuse_unresumable(checkpoint: Path, model: L.LightningModule) -> None:
    """The run's checkpoint holds what a resume needs, and weights that fit the model its config
    builds: checked before anything is rewritten (Lightning's own errors are a KeyError or a
    "size mismatch" traceback)."""
    misfits = state_mismatches(resumable_checkpoint(checkpoint)["state_dict"], model.state_dict())
    if misfits:
        raise RunDirError(f"checkpoint {checkpoint}: its weights do not fit the model of the "
                          f"run's config: {listed(misfits)}. It is damaged, or another run's: "
                          "remove it to train the run again from the start")


def writable_folder(folder: Path) -> None:
    """Make `folder`, and raise the operating system's error now if it cannot be written (the CLI
    makes it one line that names the folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))


def load_initial_weights(model: L.LightningModule, checkpoint: str) -> None:
    """`init_from`: copy the weights (not optimiser or epoch) of another run's checkpoint."""
    if not Path(checkpoint).is_file():
        raise ConfigError(f"config key `init_from`: checkpoint not found: {checkpoint}")
    try:
        state = read_checkpoint(checkpoint)["state_dict"]
    except RunDirError as exc:
        raise ConfigError(f"config key `init_from`: {exc}") from None
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in usable):
        raise ConfigError(f"config key `init_from`: {checkpoint} has no backbone weights that fit "
                          f"model.backbone={model.cfg.model.backbone}")
    # the backbone is what init_from starts from: all of it, or refused (a part of it would
    # train from its random start beside the others, and no record would say so)
    backbone = state_mismatches({k: v for k, v in state.items() if k.startswith("backbone.")},
                                {k: v for k, v in own.items() if k.startswith("backbone.")})
    if backbone:
        raise ConfigError(f"config key `init_from`: {checkpoint}'s backbone does not fit "
                          f"model.backbone={model.cfg.model.backbone} here: {listed(backbone)}; "
                          "give a checkpoint of this backbone (its model settings too, e.g. "
                          "model.small_stem)")
    model.load_state_dict(usable, strict=False)
    afresh = [m for m in state_mismatches(state, own) if not m.endswith("not in the model")]
    log.info("init_from %s: loaded %d of %d tensors%s", checkpoint, len(usable), len(own),
             f"; not loaded, so starting afresh: {listed(afresh)}" if afresh else "")


def show_progress_bar(cfg: DictConfig) -> bool:
    """A live progress bar on a terminal; otherwise (a log file, a cluster job) a line per epoch."""
    return bool(cfg.trainer.progress_bar) and sys.stdout.isatty()


def build_trainer(cfg: DictConfig, run: RunDir) -> L.Trainer:
    t = cfg.trainer
    limit = t.limit_train_batches
    slurm = SLURMEnvironment.detect()
    bar = show_progress_bar(cfg)
    callbacks: list[Callback] = [  # metrics.csv first: an epoch's row precedes its checkpoint
        EpochSummary(run.metrics, log_lines=not bar),
        RunCheckpoint(run.last_checkpoint, t.checkpoint_every_n_steps, slurm=slurm),
    ]
    if bar:
        callbacks.append(ProgressBar())
    plugins: list[Any] = [AtomicCheckpointIO()]
    if slurm:  # our checkpoint callback handles SLURM's signals; Lightning's must not as well
        plugins.append(SLURMEnvironment(auto_requeue=False))
    try:
        return L.Trainer(
            default_root_dir=run.root, max_epochs=t.max_epochs, precision=t.precision,
            accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
            strategy=t.strategy, sync_batchnorm=t.sync_batchnorm,
            gradient_clip_val=t.gradient_clip_val,
            limit_train_batches=int(limit) if limit > 1 else limit,
            log_every_n_steps=t.log_every_n_steps,
            check_val_every_n_epoch=cfg.online_eval.every_n_epochs, num_sanity_val_steps=0,
            logger=build_logger(t.logger, run) or False, enable_checkpointing=False,
            callbacks=callbacks, plugins=plugins, enable_progress_bar=bar,
            enable_model_summary=False)
    except (MisconfigurationException, ValueError) as exc:
        raise ConfigError(f"trainer settings: {str(exc).splitlines()[0]}") from None


def nan_message(exc: NonFiniteLossError, cfg: DictConfig, run: RunDir) -> str:
    """What happened, what is kept (only what is true), and advice that fits the settings."""
    kept = "no checkpoint had been written yet"
    if run.last_checkpoint.exists():
        saved = read_checkpoint(run.last_checkpoint, mmap=True)  # two integers: map, not read
        kept = (f"the last good checkpoint ({run.last_checkpoint}: epoch {saved['epoch']}, "
                f"step {saved['global_step']}) is kept")
    advice = ["lower optim.lr", "raise optim.warmup_epochs"]
    if cfg.method == "dino":
        advice.append("lower dino.clip_grad" if cfg.dino.clip_grad else "set dino.clip_grad=3.0")
    elif cfg.trainer.gradient_clip_val is None:
        advice.append("set trainer.gradient_clip_val")
    if cfg.trainer.precision == "16-mixed":
        advice.append("use trainer.precision=bf16-mixed (fp16's range overflows)")
    if run.last_checkpoint.exists():
        where = (f"in another --out (this folder keeps its config and checkpoint; add "
                 f"init_from={run.last_checkpoint} to start from its last good weights)")
    else:
        where = "with the same --out (nothing was saved, so it starts afresh)"
    return f"{exc}. The run stopped; {kept}. To go on, re-run {where} and: {', '.join(advice)}."


def optim_warnings(cfg: DictConfig) -> list[str]:
    """Optimiser settings that run, but not as they seem to."""
    if cfg.optim.lr == 0 and cfg.trainer.max_epochs > 0:
        start = "the init_from" if cfg.init_from else "its initial"
        return [f"optim.lr=0: the encoder's weights never change (only the online probe "
                f"trains), so the run keeps {start} weights; the untrained reference is "
                "trainer.max_epochs=0"]
    return []


def pretrain(cfg: DictConfig, out: str | Path) -> Path:
    """Pre-train (or resume) the run in `out`; returns the run directory."""
    quiet_lightning()
    run = RunDir(out)
    holder = exclusive(run.root, "mixdiff pretrain") if launched_rank_zero() else nullcontext()
    with holder:
        return _pretrain(cfg, run)


def _pretrain(cfg: DictConfig, run: RunDir) -> Path:
    cfg = resolve_hardware(cfg)
    for note in optim_warnings(cfg):
        log.warning(note)
    resume_from = resume_point(cfg, run)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    datamodule = MixDiffDataModule(cfg)
    datamodule.setup()
    if resume_from is not None:
        refuse_other_data(run, datamodule.summary)
        if run.metrics.is_file():  # its rows are kept: a damaged one would stay, or stop a save
            run.read_metrics("restore it, or remove it: the resumed run then writes the rows of "
                             "its next epochs only")
    datamodule.check_images(cfg.data.check_images, show_progress=show_progress_bar(cfg))
    model = METHODS[cfg.method](OmegaConf.to_container(cfg, resolve=True), datamodule.num_classes)
    if cfg.init_from and resume_from is None:
        load_initial_weights(model, cfg.init_from)
    if resume_from is not None:
        refuse_unresumable(resume_from, model)
    torch.set_float32_matmul_precision("high")
    trainer = build_trainer(cfg, run)
    # every input is good: only now does the run folder get written
    run.root.mkdir(parents=True, exist_ok=True)
    writable_folder(run.checkpoints)  # now, not when the first epoch's checkpoint is due
    remove_stale_temporaries(run.checkpoints)  # a killed save's, now: it may be gigabytes
    atomic_write_text(run.config, to_yaml(cfg))  # refreshed: resumable keys may have changed
    datamodule.write_summary(run.data_summary)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    try:
        trainer.fit(model, datamodule=datamodule,
                    ckpt_path=str(resume_from) if resume_from else None)
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(nan_message(exc, cfg, run)) from None
    except Exception as exc:
        unreadable = UnreadableImageError.from_failure(exc)
        if unreadable is None:
            raise
        raise UnreadableImageError(unreadable.path, f"{unreadable.reason} (found while "
                                   "training; `mixdiff data verify --real DIR` decodes every "
                                   "image to find the others)") from None
    return run.root
