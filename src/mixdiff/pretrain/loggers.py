"""Where a run's metrics go besides metrics.csv: one of Lightning's loggers (`trainer.logger`).

Each logger writes under RUN/logs/; TensorBoard and W&B keep writing to the same place when the
run resumes, so a resumed run is one curve, not two. `LOGGERS` is the registry of the names
`trainer.logger` accepts.
"""

from __future__ import annotations

import hashlib
import importlib.util
from typing import Callable

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from mixdiff.errors import ConfigError
from mixdiff.runs import RunDir


def _tensorboard(run: RunDir) -> Logger:
    # `tensorboard --logdir RUN/logs` shows it; version="" keeps one folder across resumes
    return TensorBoardLogger(save_dir=run.logs, name="tensorboard", version="",
                             default_hp_metric=False)


def _csv(run: RunDir) -> Logger:
    # step-level rows (RUN/metrics.csv holds one row per epoch). Lightning's CSVLogger deletes an
    # existing file in its folder, so each start or resume writes a version_<n>/ of its own.
    return CSVLogger(save_dir=run.logs, name="csv")


def _wandb(run: RunDir) -> Logger:
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("config key `trainer.logger` = 'wandb' needs the wandb package: "
                          "pip install 'mixdiff[wandb]' (or choose tensorboard, csv or none)")
    from lightning.pytorch.loggers import WandbLogger

    # one W&B run per run folder, found again on resume by an id derived from the folder
    run_id = hashlib.sha256(str(run.root.resolve()).encode()).hexdigest()[:16]
    return WandbLogger(save_dir=run.logs, name=run.root.name, id=run_id, resume="allow",
                       project="mixdiff")


LOGGERS: dict[str, Callable[[RunDir], Logger | None]] = {
    "tensorboard": _tensorboard, "csv": _csv, "wandb": _wandb, "none": lambda run: None}


def build_logger(name: str, run: RunDir) -> Logger | None:
    return LOGGERS[name](run)
