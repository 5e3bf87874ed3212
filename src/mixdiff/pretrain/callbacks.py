"""The Lightning callbacks of a pre-training run: metrics.csv with a log line per epoch, a progress
bar that does not stall the GPU, and a checkpoint that a kill, a stop signal or a cluster's time
limit cannot take away.

What a kill loses:
  * SIGKILL (or a crash): the work since the last save of RUN/checkpoints/last.ckpt, which is
    written at the end of every epoch and, with `trainer.checkpoint_every_n_steps=N`, every N steps.
  * SIGTERM, SIGINT (Ctrl-C), and SIGUSR1 under SLURM: nothing. The run finishes the batch it is
    on (with several processes: up to STOP_POLL_STEPS batches, for all to stop at the same one),
    saves last.ckpt where it is (mid-epoch if need be), and stops; SIGUSR1 also requeues the
    SLURM job (`#SBATCH --signal=USR1@120`). A second Ctrl-C stops at once, without saving.
Re-running the same command resumes from last.ckpt; a run saved mid-epoch continues that epoch
with the samples it had not seen yet (see `pretrain.input.datamodule.ResumableSampler`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar

from mixdiff.io import atomic_write_text
from mixdiff.runs import Metric

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REQUEUE_SIGNAL = signal.SIGUSR1  # Lightning's and SLURM's convention for "time is nearly up"
STOP_POLL_STEPS = 8  # with several processes, they agree on stopping every this many steps


class RunInterrupted(Exception):
    """The run stopped on a signal after saving its checkpoint (not an error: resume it)."""

    def __init__(self, signum: int, epoch: int, step: int, checkpoint: Path, requeued: bool):
        self.signum, self.epoch, self.step = signum, epoch, step
        self.checkpoint, self.requeued = checkpoint, requeued
        name = signal.Signals(signum).name
        then = "the SLURM job was requeued" if requeued else "re-run the same command to resume"
        super().__init__(f"stopped by {name} at epoch {epoch}, step {step}; saved {checkpoint}; "
                         f"{then}")


class EpochSummary(Callback):
    """RUN/metrics.csv: one row per epoch of every epoch-level metric, plus the epoch's time and
    throughput; and, when no progress bar is shown, the same as one log line.

    A resumed run rewrites the rows of epochs it repeats, so each epoch appears once.
    """

    def __init__(self, path: Path, log_lines: bool):
        self.path, self.log_lines = path, log_lines
        self._start, self._samples = 0.0, 0

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """An untrained reference (`trainer.max_epochs=0`) has a metrics.csv with no epochs."""
        if trainer.max_epochs == 0 and trainer.is_global_zero and not self.path.exists():
            atomic_write_text(self.path, "epoch,step\n")

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start, self._samples = time.perf_counter(), 0

    # a run resumed mid-epoch gets no on_train_epoch_start for that epoch (Lightning's fit loop
    # skips it): its row times the part of the epoch that ran in this process
    on_train_start = on_train_epoch_start

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        self._samples += len(batch[0])

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        metrics = trainer.callback_metrics  # on every rank: computing it syncs metrics across ranks
        if not trainer.is_global_zero:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        evaluated = getattr(module, "last_evaluated_epoch", None) == trainer.current_epoch
        for key, value in sorted(metrics.items()):
            if "/" not in key:  # namespaced metrics only (not the progress-bar copy of the loss)
                continue
            if key in Metric.ONLINE and not evaluated:  # stale: from an earlier epoch
                continue
            row[key] = round(float(value), 6)
        row[Metric.EPOCH_SECONDS] = round(seconds, 2)
        row[Metric.IMAGES_PER_SECOND] = round(self._samples * trainer.world_size / seconds, 1)
        self._write(row)
        if self.log_lines:
            log.info(epoch_line(row, trainer.max_epochs))

    def _write(self, row: dict[str, Any]) -> None:
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


def epoch_line(row: dict[str, Any], max_epochs: int) -> str:
    """'epoch 3/10: loss 4.1234, online kNN 75.2%, online probe 70.1%, 41.2 s, 145 samples/s'"""
    loss = row.get(Metric.TRAIN_LOSS, float("nan"))
    parts = [f"epoch {row['epoch'] + 1}/{max_epochs}: loss {loss:.4f}"]
    for key, name in ((Metric.KNN_VAL_TOP1, "online kNN"), (Metric.PROBE_VAL_TOP1, "online probe")):
        if key in row:
            parts.append(f"{name} {100 * row[key]:.1f}%")
    parts.append(f"{row[Metric.EPOCH_SECONDS]:.1f} s")
    parts.append(f"{row[Metric.IMAGES_PER_SECOND]:.0f} samples/s")
    return ", ".join(parts)


class ProgressBar(RichProgressBar):
    """Rich's progress bar, reading the logged metrics at most every METRICS_EVERY_S seconds
    between steps (always at the ends of epochs and validation). A read copies the loss from the
    GPU and so waits for the step to finish: after every step, it would leave the GPU idle while
    the CPU prepares the next batch, where the next batch's input work could have run beside the
    step (`mixdiff.pretrain.input.input_stream`)."""

    METRICS_EVERY_S = 0.5

    def __init__(self):
        super().__init__()
        self._metrics: dict = {}
        self._read_at = -math.inf
        self._between_steps = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._between_steps = True
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._between_steps = False

    def get_metrics(self, trainer, pl_module) -> dict:
        now = time.monotonic()
        if not self._between_steps or now - self._read_at >= self.METRICS_EVERY_S:
            self._metrics, self._read_at = super().get_metrics(trainer, pl_module), now
        return self._metrics


class RunCheckpoint(Callback):
    """RUN/checkpoints/last.ckpt after every epoch (after metrics.csv has that epoch's row), every
    `every_n_steps` optimiser steps, and when a stop signal arrives (then the run stops).

    Writes go through the Trainer's checkpoint IO, which is atomic (train.AtomicCheckpointIO).
    A failed step (NaN loss, an unreadable image) saves nothing: last.ckpt stays the last good one.
    """

    def __init__(self, path: Path, every_n_steps: int | None = None, slurm: bool = False):
        self.path, self.every_n_steps, self.slurm = path, every_n_steps, slurm
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}

    # --- signals: set a flag; the training loop acts on it at the next batch boundary ----------
    def _signals(self) -> tuple[int, ...]:
        return STOP_SIGNALS + ((REQUEUE_SIGNAL,) if self.slurm else ())

    def _on_signal(self, signum: int, frame) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            log.warning("a second Ctrl-C: stopping at once, without saving; %s is the last "
                        "checkpoint saved (re-run the same command to resume from it)", self.path)
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (Lightning exits with 1)
        log.warning("received %s: saving a checkpoint after this batch, then stopping",
                    signal.Signals(signum).name)
        self._signal = signum

    def setup(self, trainer, module, stage: str) -> None:
        self._signal = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in self._signals()}

    def on_train_start(self, trainer, module) -> None:
        # installed after Lightning's own handlers (registered when fit starts), replacing them:
        # they would stop the run at points where no consistent checkpoint can be saved
        if threading.current_thread() is threading.main_thread():
            for s in self._signals():
                signal.signal(s, self._on_signal)

    def teardown(self, trainer, module, stage: str) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self.teardown(trainer, module, "fit")  # Lightning skips `teardown` after an exception

    # --- saving -----------------------------------------------------------------------------
    def _stop_requested(self, trainer: L.Trainer, any_step: bool = False) -> bool:
        """Whether any rank got a stop signal (all ranks must stop at the same batch). With several
        processes, asking is a collective that waits for the step to finish, and the GPU would
        idle while the next batch is prepared: between epochs' ends they ask every
        STOP_POLL_STEPS steps."""
        if trainer.world_size > 1 and not any_step and trainer.global_step % STOP_POLL_STEPS:
            return False
        return trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False)

    def on_fit_start(self, trainer, module) -> None:
        """`trainer.max_epochs=0`: the untrained reference. Its last.ckpt holds the seed's
        initialisation, the weights every run of this seed starts from."""
        if trainer.max_epochs == 0 and not self.path.exists():
            trainer.save_checkpoint(self.path)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if last_batch_of_epoch(trainer):
            # the epoch's end saves and stops: a checkpoint saved here would count the epoch as
            # finished (Lightning resumes at the next one) before metrics.csv has its row
            return
        stop = self._stop_requested(trainer)
        periodic = self.every_n_steps and trainer.global_step % self.every_n_steps == 0
        if stop or periodic:
            trainer.save_checkpoint(self.path)
        if stop:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        trainer.save_checkpoint(self.path)
        if self._stop_requested(trainer, any_step=True):
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        signum = self._signal if self._signal is not None else signal.SIGTERM  # another rank's
        requeued = signum == REQUEUE_SIGNAL and trainer.is_global_zero and requeue_slurm_job()
        raise RunInterrupted(signum, trainer.current_epoch, trainer.global_step, self.path,
                             requeued)


def last_batch_of_epoch(trainer: L.Trainer) -> bool:
    """Whether the batch that just ran is the epoch's last (Lightning's own test of an epoch's
    end, `_num_ready_batches_reached`, which also counts `limit_train_batches`)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.is_last_batch or progress.current.ready >= trainer.num_training_batches


def requeue_slurm_job() -> bool:
    """`scontrol requeue` this SLURM job (or array task); True if it was requeued."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        return False
    try:
        return subprocess.run(["scontrol", "requeue", job], check=False).returncode == 0
    except FileNotFoundError:
        log.warning("SLURM job %s: scontrol not found, not requeued", job)
        return False
