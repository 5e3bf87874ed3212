"""The run folder: what `mixdiff pretrain` writes and every other command reads.

RUN/
  config.yaml                   the resolved config (a re-run must match it, but for resumable keys)
  data.json                     what was trained and evaluated on: split sizes, classes, val source
  metrics.csv                   one row per epoch (the column names are `Metric` below)
  checkpoints/last.ckpt         written atomically after every epoch, every N steps if asked, and
                                when SIGTERM / SIGINT stops the run
  logs/                         the logger's files (TensorBoard by default; `trainer.logger`)
  eval/<command>/<name>.json    results of `mixdiff eval <command>` on dataset or suite <name>
  eval/linear/<name>.probe.pt   the linear probe fitted on <name>, with its class list
  eval/<command>/<name>/...     files an evaluation writes beside its result (VizWiz predictions)
  cache/features/<key>.pt       frozen features, keyed by checkpoint, dataset and transform

An external encoder's results folder (`mixdiff eval ... --model NAME --out DIR`) is laid out the
same, with DIR/encoder.json (what the encoder is) in place of config.yaml.

Every path is defined here once; the other modules ask a `RunDir` for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from mixdiff.config import load_saved_config
from mixdiff.errors import RunDirError
from mixdiff.paths import file_name

CONFIG = "config.yaml"
DATA_SUMMARY = "data.json"
ENCODER = "encoder.json"  # an external encoder's folder: the model, its weights, its transform
METRICS = "metrics.csv"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOGS = "logs"
EVAL = "eval"
FEATURE_CACHE = "cache/features"
# `weights` of a result on the raw pixels of the evaluation images (`mixdiff eval knn|linear
# --pixels`): a floor that no encoder is needed for, kept in the run whose transform it used
PIXELS = "pixels"
# what a run's commands write in it (the layout above): never replaced by another command's file
OWN_FILES = (CONFIG, DATA_SUMMARY, METRICS)
OWN_FOLDERS = (CHECKPOINTS, LOGS, EVAL, FEATURE_CACHE.split("/")[0])
# how messages name the <name> of eval/<command>/<name>.json (`mixdiff eval ... --name`, by
# default the dataset's)
RESULT_NAME = "the result name (--name)"


def read_checkpoint(path: str | Path, mmap: bool = False, lightning: bool = True,
                    allow: Sequence[type] = ()) -> dict:
    """A Lightning checkpoint of `mixdiff pretrain`, or one clear error saying what is wrong with
    the file (empty, cut short, not a checkpoint, asking to run code) instead of torch's. Read
    with weights_only=True (`mixdiff.torch_files`): our checkpoints need nothing beyond torch's
    defaults; `allow` names the harmless classes a checkpoint from elsewhere may also hold (the
    official DINO checkpoints: `argparse.Namespace`), for this load only. `mmap`: map the tensors
    rather than read them (when only some are wanted). `lightning=False`: any dict torch saved
    (Lightning's own temporary files, e.g. ddp_spawn's weights)."""
    from mixdiff.torch_files import load_torch_file

    fix = (f"Give another checkpoint (a run's damaged {CHECKPOINTS}/{LAST_CHECKPOINT} can be "
           "removed: `mixdiff pretrain` with the run's --out then trains it again from the start)")
    saved = load_torch_file(path, "checkpoint", fix, allow, mmap)
    if isinstance(saved, dict) and ("state_dict" in saved or not lightning):
        return saved
    raise RunDirError(f"checkpoint {path} holds no `state_dict`: not a `mixdiff pretrain` "
                      f"checkpoint. {fix}")


class Metric:
    """Column names of metrics.csv (and the names logged to TensorBoard / W&B)."""

    TRAIN_LOSS = "train/loss"
    # pairs whose partner view was synthetic (extra mode: twin views that were)
    SYNTHETIC_FRACTION = "train/synthetic_fraction"
    LR = "train/lr"
    WEIGHT_DECAY = "train/weight_decay"
    TRAIN_PROBE_LOSS = "train/online_probe_loss"  # the online probe on the training views
    TRAIN_PROBE_TOP1 = "train/online_probe_top1"
    PROBE_VAL_TOP1 = "online_probe/val_top1"  # the online probe on the val images
    PROBE_VAL_LOSS = "online_probe/val_loss"
    KNN_VAL_TOP1 = "online_knn/val_top1"  # weighted kNN, bank = real training images
    EPOCH_SECONDS = "time/epoch_seconds"
    IMAGES_PER_SECOND = "time/images_per_second"  # training samples (pairs or crops sets) per s

    ONLINE = (PROBE_VAL_TOP1, PROBE_VAL_LOSS, KNN_VAL_TOP1)  # only in epochs that evaluate


@dataclass(frozen=True)
class RunDir:
    """A run folder of `mixdiff pretrain`."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def encoder_record(self) -> Path:
        return self.root / ENCODER

    @property
    def data_summary(self) -> Path:
        return self.root / DATA_SUMMARY

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    def eval_result(self, command: str, name: str) -> Path:
        """Where `mixdiff eval <command>` writes its result for dataset or suite `name` (a file
        name: never a path out of the run folder)."""
        return self.root / EVAL / command / f"{file_name(name, RESULT_NAME)}.json"

    def probe(self, name: str) -> Path:
        """The linear probe `mixdiff eval linear` fitted on dataset `name`."""
        return self.root / EVAL / "linear" / f"{file_name(name, RESULT_NAME)}.probe.pt"

    def probes(self) -> list[Path]:
        return sorted((self.root / EVAL / "linear").glob("*.probe.pt"))

    def eval_artifact(self, command: str, name: str, filename: str) -> Path:
        """A file an evaluation writes beside its result (e.g. a prediction file for a server):
        RUN/eval/<command>/<name>/<filename>, one folder down so it is never read as a result."""
        return self.root / EVAL / command / file_name(name, RESULT_NAME) / filename

    def eval_results(self) -> list[Path]:
        return sorted((self.root / EVAL).glob("*/*.json"))

    def feature_cache(self, key: str) -> Path:
        return self.root / FEATURE_CACHE / f"{key}.pt"

    @classmethod
    def enclosing(cls, path: str | Path) -> "RunDir | None":
        """The run folder that `path` lies in (links followed), if any."""
        for folder in Path(path).resolve().parents:
            if (folder / CONFIG).is_file():
                return cls(folder)
        return None

    def owns(self, path: str | Path) -> bool:
        """Whether `path` is one of the run's own files: config.yaml, data.json, metrics.csv, or
        anything under checkpoints/, logs/, eval/ or cache/ (what the run's commands write and
        read back)."""
        try:
            parts = Path(path).resolve().relative_to(self.root.resolve()).parts
        except ValueError:
            return False
        return bool(parts) and (parts[0] in OWN_FOLDERS or
                                (len(parts) == 1 and parts[0] in OWN_FILES))

    # --- reading a finished (or running) run -------------------------------------------------
    def load_config(self) -> DictConfig:
        """The run's resolved config, on today's schema (keys added since it was written take
        their defaults); a folder without one is not a run."""
        if not self.config.is_file():
            raise RunDirError(f"{self.root} is not a `mixdiff pretrain` run folder: it has no "
                              f"{CONFIG}")
        return load_saved_config(self.config)

    def classes(self) -> tuple[str, ...]:
        """The run's training classes (its class folder names), in label order."""
        if not self.data_summary.is_file():
            raise RunDirError(f"{self.root} has no {DATA_SUMMARY}: not a finished start of "
                              "`mixdiff pretrain`")
        return tuple(json.loads(self.data_summary.read_text())["classes"])

    def require_checkpoint(self) -> Path:
        """The run's last checkpoint, or an error saying how to make one."""
        self.load_config()
        if not self.last_checkpoint.is_file():
            raise RunDirError(f"{self.root} has no {CHECKPOINTS}/{LAST_CHECKPOINT} yet: it is "
                              "written after the first epoch; run (or resume) `mixdiff pretrain` "
                              f"with --out {self.root}")
        return self.last_checkpoint
