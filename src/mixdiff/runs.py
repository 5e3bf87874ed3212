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

Every path is defined here once; the other modules ask a `RunDir` for it, and it is handed out
only if it lies inside the run folder once links are followed: a run's own file or folder that is a
link to elsewhere (RUN/eval -> /elsewhere) is refused in one line, never read or written. Its
commands would otherwise write results, caches and checkpoints to a place the run does not hold
(another run's folder, a user's files), and read what is there as the run's. The run folder itself
may be a link (to keep it on another disk): what is inside it stays inside.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

from mixdiff.config import load_saved_config
from mixdiff.errors import RunDirError, UnsafePathError
from mixdiff.paths import file_name, kept_inside

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
OWN_IN_WORDS = ", ".join([*OWN_FILES, *(f"{folder}/" for folder in OWN_FOLDERS)])  # messages
# how messages name the <name> of eval/<command>/<name>.json (`mixdiff eval ... --name`, by
# default the dataset's)
RESULT_NAME = "the result name (--name)"
# what a result name may not end in: the suffixes of the files it names (x.json would be
# eval/knn/x.json.json, and its predictions a folder eval/knn/x.json/ beside the results)
FILE_SUFFIXES = (".json", ".pt", ".npz", ".csv")
# data.json's key of the fingerprints of the trees a run started on, by config key
# (`mixdiff.data.tree.fingerprint`)
FINGERPRINTS = "fingerprints"
# what to do about a damaged file of a run, said where nothing more specific applies
DAMAGED_FIX = "restore it (or delete it and make it again), or leave this run out"


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


# what Lightning reads to resume a run, beside the weights (its own keys of a checkpoint)
RESUME_KEYS = ("pytorch-lightning_version", "epoch", "global_step", "optimizer_states", "loops")


def resumable_checkpoint(path: str | Path) -> dict:
    """A checkpoint a run can resume from: a Lightning checkpoint with its training state
    (RESUME_KEYS), or one line saying what it lacks and what to do (read mapped: a check)."""
    saved = read_checkpoint(path, mmap=True)
    missing = [key for key in RESUME_KEYS if key not in saved]
    if missing:
        raise RunDirError(f"checkpoint {path} holds weights but not the training state a resume "
                          f"needs (no {', '.join(missing)}): it is damaged, or not a checkpoint "
                          f"of `mixdiff pretrain`. Remove it to train the run again from the "
                          "start, or start another --out from its weights (init_from=...)")
    return saved


def state_mismatches(saved: Mapping[str, Any], own: Mapping[str, Any]) -> list[str]:
    """How the tensors of a saved state dict do not fit a model's (`own`), in words, one per
    tensor: missing from the file, of another shape, or matching nothing in the model."""
    found = [f"{key}: {tuple(saved[key].shape)} in the file, {tuple(tensor.shape)} in the model"
             for key, tensor in own.items()
             if key in saved and tuple(getattr(saved[key], "shape", ())) != tuple(tensor.shape)]
    found += [f"{key}: not in the file" for key in own if key not in saved]
    found += [f"{key}: in the file, not in the model" for key in saved if key not in own]
    return found


def listed(items: list[str], shown: int = 4) -> str:
    """The first `shown` of `items`, and how many more there are."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


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


def is_fingerprint(found) -> bool:
    """Whether `found` (read back from a file) has the shape `mixdiff.data.tree.fingerprint`
    gives, so that `fingerprint_changes` can compare it (here, in the floor: data.json and the
    results are read by the floor's readers before any stage compares them)."""
    def counted(entry) -> bool:
        return isinstance(entry, dict) and isinstance(entry.get("images"), int) and \
            isinstance(entry.get("sha256"), str)

    return counted(found) and isinstance(found.get("classes"), dict) and \
        all(map(counted, found["classes"].values()))


@dataclass(frozen=True)
class RunDir:
    """A run folder of `mixdiff pretrain`."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def own(self, *parts: str) -> Path:
        """RUN/<parts>, provided it lies inside the run folder once links are followed (see the
        module's text); else one line saying which link leads where, and what to do."""
        return kept_inside(self.root, parts, "run folder",
                           f"a run's own files ({OWN_IN_WORDS})")

    @property
    def config(self) -> Path:
        return self.own(CONFIG)

    @property
    def encoder_record(self) -> Path:
        return self.own(ENCODER)

    @property
    def data_summary(self) -> Path:
        return self.own(DATA_SUMMARY)

    @property
    def metrics(self) -> Path:
        return self.own(METRICS)

    @property
    def checkpoints(self) -> Path:
        return self.own(CHECKPOINTS)

    @property
    def last_checkpoint(self) -> Path:
        return self.own(CHECKPOINTS, LAST_CHECKPOINT)

    @property
    def logs(self) -> Path:
        return self.own(LOGS)

    def eval_result(self, command: str, name: str) -> Path:
        """Where `mixdiff eval <command>` writes its result for dataset or suite `name` (a file
        name: never a path out of the run folder)."""
        return self.own(EVAL, command, f"{checked_result_name(name)}.json")

    def probe(self, name: str) -> Path:
        """The linear probe `mixdiff eval linear` fitted on dataset `name`."""
        return self.own(EVAL, "linear", f"{checked_result_name(name)}.probe.pt")

    def probes(self) -> list[Path]:
        return self._files(EVAL, "linear", "*.probe.pt")

    def eval_artifact(self, command: str, name: str, filename: str) -> Path:
        """A file an evaluation writes beside its result (e.g. a prediction file for a server):
        RUN/eval/<command>/<name>/<filename>, one folder down so it is never read as a result."""
        return self.own(EVAL, command, checked_result_name(name), filename)

    def eval_results(self) -> list[Path]:
        """The result files (files only: a folder of that name is not one)."""
        return self._files(EVAL, "*/*.json")

    def feature_cache(self, key: str) -> Path:
        return self.own(FEATURE_CACHE, f"{key}.pt")

    def _files(self, *parts: str) -> list[Path]:
        """The files matching the pattern `parts` under the run folder, each inside it."""
        folder, pattern = self.own(*parts[:-1]), parts[-1]
        found = sorted(folder.glob(pattern))
        return [self.own(*path.relative_to(self.root).parts) for path in found
                if path.is_file()]

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
        classes = self.read_data_summary().get("classes")
        if not isinstance(classes, list):
            raise RunDirError(f"{self.data_summary} has no list of `classes`: the file is "
                              "damaged; restore it, or leave this run out")
        return tuple(classes)

    def read_data_summary(self, fix: str = DAMAGED_FIX) -> dict:
        """data.json, or one line saying it is damaged (not a JSON object) and `fix`."""
        return read_json_object(self.data_summary, fix)

    def read_fingerprints(self, fix: str = DAMAGED_FIX) -> dict[str, dict]:
        """data.json's fingerprints of the trees the run started on ({} where it keeps none: no
        data.json, or an older mixdiff's); a damaged file or entry is one line naming it and
        `fix`, never taken for "unknown"."""
        if not self.data_summary.is_file():
            return {}
        found = self.read_data_summary(fix).get(FINGERPRINTS) or {}
        if not isinstance(found, dict) or not all(map(is_fingerprint, found.values())):
            raise RunDirError(f"{self.data_summary}: its `{FINGERPRINTS}` are not what `mixdiff "
                              f"pretrain` writes (the file is damaged); {fix}")
        return found

    def read_metrics(self, fix: str = "restore it, or leave this run out of the report"
                     ) -> list[dict[str, str]]:
        """metrics.csv's rows, each value checked to be a number (or empty): a damaged file is
        one line naming it and `fix`, not a half-written report or a resumed run that keeps its
        bad rows."""
        path = self.metrics
        try:
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise RunDirError(f"{path} is not a CSV file of numbers ({exc}): the file is "
                              f"damaged; {fix}") from None
        if reader.fieldnames is not None and "epoch" not in reader.fieldnames:
            raise RunDirError(f"{path} has no `epoch` column (the file is damaged): {fix}")
        for line, row in enumerate(rows, 2):
            for column, value in row.items():
                try:
                    if column is None or value is None:
                        raise ValueError
                    if value != "":
                        float(value)
                    if column == "epoch":
                        int(value)
                except ValueError:
                    raise RunDirError(f"{path}, line {line}: {value!r} in column {column!r} is "
                                      f"not a number (the file is damaged): {fix}") from None
        return rows

    def require_checkpoint(self) -> Path:
        """The run's last checkpoint, or an error saying how to make one."""
        self.load_config()
        if not self.last_checkpoint.is_file():
            raise RunDirError(f"{self.root} has no {CHECKPOINTS}/{LAST_CHECKPOINT} yet: it is "
                              "written after the first epoch; run (or resume) `mixdiff pretrain` "
                              f"with --out {self.root}")
        return self.last_checkpoint


def read_json_object(path: Path, fix: str = DAMAGED_FIX) -> dict:
    """A JSON object a command wrote in a run folder (data.json, encoder.json), or one line
    saying the file is damaged, and `fix`."""
    try:
        found = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc}): the file is damaged; {fix}"
                          ) from None
    if not isinstance(found, dict):
        raise RunDirError(f"{path} holds no JSON object: the file is damaged; {fix}")
    return found


def read_result_file(path: Path) -> dict:
    """A result file of `mixdiff eval` as a dict, or one line saying it is damaged."""
    return read_json_object(path, "delete it, or re-run the `mixdiff eval` command that wrote it")


def checked_result_name(name: str, what: str = RESULT_NAME) -> str:
    """A result's name (`--name`, or the dataset's): a file name, never a path out of the run
    folder, and not one that ends in a suffix of the files it names (FILE_SUFFIXES)."""
    file_name(name, what)
    if name.lower().endswith(FILE_SUFFIXES):
        suffix = name[name.rindex("."):]
        raise UnsafePathError(f"{what} {name!r} ends in {suffix}: it names the result, whose "
                              "files get their own suffixes (NAME.json, NAME.probe.pt); give it "
                              f"without {suffix}")
    return name
