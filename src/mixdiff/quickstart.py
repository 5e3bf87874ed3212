"""`mixdiff quickstart`: the paper's experiment on Fashion-MNIST, offline, in minutes.

A driver of the real commands, nothing of its own: `data prepare`, `generate --generator sdedit`
(the embedded DDPM), `pretrain` of each method in the four data modes, `eval linear`, `eval knn`
and `eval robustness --suite corruptions` of each run, `report`, then a three-line verdict.
Every stage is resumable: running the command again reuses whatever is complete.

OUT/
  quickstart.json          the settings, what each stage took, and the verdict
  fashion-mnist/{train,test}/   a fixed class-stratified subset of Fashion-MNIST (data prepare)
  synthetic/v0/            one SDEdit variation of each training image (generate)
  runs/<method>-<mode>-s<seed>/    pre-training runs with their evaluations
  report/                  results.md, id_vs_ood.png, radar.png, curves.png, pairs.png
  logs/<stage>.log         the traceback of a stage that failed
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from mixdiff.errors import MixDiffError
from mixdiff.io import atomic_write_text
from mixdiff.runs import RunDir

log = logging.getLogger(__name__)

METHODS = ("simclr", "barlow_twins", "dino")
MODES = ("real", "synthetic", "mixdiff", "pooled")
DATASET = "fashion-mnist"


@dataclass(frozen=True)
class QuickstartSettings:
    """Everything the quickstart does; `PRESETS` hold the three sizes (fast, default, gpu)."""

    methods: tuple[str, ...] = ("simclr",)
    modes: tuple[str, ...] = MODES
    seeds: int = 1
    per_class: int | None = 80  # train AND test images per class (None: all 60,000 + 10,000)
    epochs: int = 8
    batch_size: int = 128
    image_size: int = 32
    small_stem: bool = False  # the CPU presets use ResNet-18's own stem: 16x fewer FLOPs at 32 px
    strength: float = 0.3  # SDEdit strength: keeps the class best (README, "Measured": fidelity)
    real_fraction: float = 1.0  # the paper's "less real data"
    augment: str | None = None  # "none": the paper's no-augmentation run (else the preset's)
    corruptions: tuple[str, ...] = ("gaussian_noise", "defocus_blur", "contrast", "pixelate",
                                    "jpeg_compression", "sketch")
    severities: tuple[int, ...] = (3,)
    device: str = "cpu"
    workers: int = 2
    seed: int = 0

    def run_name(self, method: str, mode: str, seed: int) -> str:
        return f"{method}-{mode}-s{seed}"

    def runs(self) -> Iterator[tuple[str, str, int]]:
        for method in self.methods:
            for mode in self.modes:
                for seed in range(self.seed, self.seed + self.seeds):
                    yield method, mode, seed


PRESETS: dict[str, QuickstartSettings] = {
    # a smoke check: every stage, tiny sizes (2.3 minutes on the 2-core CPU)
    "fast": QuickstartSettings(per_class=20, epochs=2, batch_size=32,
                               corruptions=("gaussian_noise", "contrast", "sketch")),
    # the default on a CPU (12 minutes on the 2-core CPU)
    "default": QuickstartSettings(),
    # --device cuda: the whole training set, the CPU presets' small-image stem, more epochs
    "gpu": QuickstartSettings(methods=METHODS, per_class=None, epochs=50, batch_size=256,
                              small_stem=True, severities=(1, 2, 3, 4, 5), corruptions=(),
                              device="cuda", workers=8),
}


class StageError(MixDiffError):
    """A stage of the quickstart failed; the message says which, why, and where the log is."""


@dataclass
class Paths:
    out: Path

    @property
    def data(self) -> Path:
        return self.out / DATASET  # the folder above a tree names its dataset in every result

    @property
    def train(self) -> Path:
        return self.data / "train"

    @property
    def test(self) -> Path:
        return self.data / "test"

    @property
    def synthetic(self) -> Path:
        return self.out / "synthetic"

    @property
    def twins(self) -> Path:
        return self.synthetic / "v0"

    @property
    def report(self) -> Path:
        return self.out / "report"

    @property
    def record(self) -> Path:
        return self.out / "quickstart.json"

    def run(self, name: str) -> RunDir:
        return RunDir(self.out / "runs" / name)

    def log(self, stage: str) -> Path:
        return self.out / "logs" / f"{stage.replace('/', '_')}.log"


def preset_config(method: str) -> Path:
    """The package's Fashion-MNIST preset of a method (configs/fashion_mnist/<method>.yaml)."""
    return Path(str(resources.files("mixdiff").joinpath(f"configs/fashion_mnist/{method}.yaml")))


def run_overrides(s: QuickstartSettings, paths: Paths, mode: str, seed: int) -> list[str]:
    """The config of one run: the method's preset, then these (identical for every mode)."""
    overrides = {
        "data.real": paths.train, "data.val": paths.test, "data.synthetic": f"[{paths.twins}]",
        "data.mode": mode, "data.real_fraction": s.real_fraction,
        "data.image_size": s.image_size, "data.num_workers": s.workers,
        "model.small_stem": s.small_stem, "trainer.max_epochs": s.epochs,
        "trainer.batch_size": s.batch_size, "trainer.seed": seed,
        "trainer.progress_bar": False,
        "trainer.accelerator": "gpu" if s.device == "cuda" else "cpu",
        "online_eval.knn_max_train_images": "null",
    }
    if s.augment is not None:
        overrides["augment.recipe"] = s.augment
    return [f"{key}={value}" for key, value in overrides.items()]


# --- stages ------------------------------------------------------------------------------------
def _prepare(s: QuickstartSettings, paths: Paths) -> dict:
    from mixdiff.data import fashion_mnist

    splits = fashion_mnist.prepare(paths.data, per_class=s.per_class, show_progress=False)
    return {split: {"images": prepared.images, "written": prepared.written}
            for split, prepared in splits.items()}


def _generate(s: QuickstartSettings, paths: Paths) -> dict:
    from mixdiff.generate.runner import generate
    from mixdiff.generate.settings import GenerateSettings

    settings = GenerateSettings(generator="sdedit", strength=s.strength, batch_size=100,
                                device=s.device, seed=s.seed)
    summary = generate(paths.train, paths.synthetic, settings, show_progress=False)
    if summary.failed:
        raise MixDiffError(f"{len(summary.failed)} images could not be generated, e.g. "
                           f"{summary.failed[0]['source']}: {summary.failed[0]['error']}")
    return {"written": summary.written, "reused": summary.skipped}


def _finished(run: RunDir, epochs: int) -> bool:
    """Whether `run` was made for `epochs` epochs and trained them all (a row for each in its
    metrics.csv)."""
    if not (run.config.is_file() and run.metrics.is_file() and run.last_checkpoint.is_file()):
        return False
    if run.load_config().trainer.max_epochs != epochs:  # pretrain says what to do about it
        return False
    return len(run.metrics.read_text().strip().splitlines()) - 1 >= epochs


def _pretrain(s: QuickstartSettings, paths: Paths, method: str, mode: str, seed: int) -> dict:
    from mixdiff.config import load_config
    from mixdiff.train import pretrain

    run = paths.run(s.run_name(method, mode, seed))
    if _finished(run, s.epochs):
        return {"reused": True}
    pretrain(load_config(preset_config(method), run_overrides(s, paths, mode, seed)), run.root)
    return {"reused": False}


def _current(run: RunDir, command: str, name: str, checkpoint_sha256: str) -> bool:
    """Whether the run already has this result, made from the checkpoint with this hash."""
    from mixdiff.evaluate.results import read_result

    path = run.eval_result(command, name)
    if not path.is_file():
        return False
    return read_result(path)["checkpoint"]["sha256"] == checkpoint_sha256


def _evaluate(s: QuickstartSettings, paths: Paths, method: str, mode: str, seed: int) -> dict:
    from mixdiff.evaluate.features import Encoder, labelled_sets
    from mixdiff.evaluate.knn import knn_eval
    from mixdiff.evaluate.linear import linear_eval
    from mixdiff.evaluate.robustness import (SUITES, EncodeOptions, parse_corruptions,
                                             robustness_eval)

    run = paths.run(s.run_name(method, mode, seed))
    encoder = Encoder.from_run(run, device=s.device)
    train, test = labelled_sets(paths.train, paths.test, DATASET)
    done = []
    if not _current(run, "linear", DATASET, encoder.checkpoint_sha256):
        linear_eval(encoder, train, test, num_workers=s.workers, show_progress=False)
        done.append("linear")
    if not _current(run, "knn", DATASET, encoder.checkpoint_sha256):
        knn_eval(encoder, train, test, num_workers=s.workers, show_progress=False)
        done.append("knn")
    suite = SUITES["corruptions"]
    if not _current(run, "robustness", suite.name, encoder.checkpoint_sha256):
        corruptions = s.corruptions or parse_corruptions(None)  # none named: all of them
        robustness_eval(encoder, suite, suite.scan(paths.test), DATASET, corruptions,
                        s.severities, EncodeOptions(num_workers=s.workers, show_progress=False))
        done.append("robustness")
    return {"evaluated": done}


def _report(s: QuickstartSettings, paths: Paths) -> dict:
    from mixdiff.report.build import write_report

    runs = [paths.run(s.run_name(*key)).root for key in s.runs()]
    report = write_report(runs, paths.report)
    return {"files": [str(f) for f in report.files], "notes": report.notes}


# --- the verdict -------------------------------------------------------------------------------
def _mean_and_spread(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def verdict(s: QuickstartSettings, paths: Paths) -> list[str]:
    """Three lines: MixDiff vs real on clean and on corrupted test images, per method, over the
    seeds, and what that amounts to."""
    from mixdiff.evaluate.results import read_result

    def values(method: str, mode: str, command: str, name: str) -> list[float]:
        return [read_result(paths.run(s.run_name(method, mode, seed)).eval_result(command, name))
                ["value"] for seed in range(s.seed, s.seed + s.seeds)]

    if not {"real", "mixdiff"} <= set(s.modes):
        return ["No verdict: it compares data.mode=mixdiff with data.mode=real; run both modes."]
    lines, wins, gaps = [], {"clean": 0, "shifted": 0}, []
    for label, command, name, what in (
            ("clean", "linear", DATASET, "clean test images (offline linear probe)"),
            ("shifted", "robustness", "corruptions",
             f"corrupted test images ({len(s.corruptions) or 'all'} corruptions, severity "
             f"{','.join(map(str, s.severities))})")):
        parts = []
        for method in s.methods:
            mixdiff, real = values(method, "mixdiff", command, name), \
                values(method, "real", command, name)
            gap = 100 * (statistics.fmean(mixdiff) - statistics.fmean(real))
            wins[label] += gap > 0
            gaps.append(gap)
            parts.append(f"{method} {_mean_and_spread(mixdiff)} vs {_mean_and_spread(real)} "
                         f"({gap:+.1f})")
        lines.append(f"MixDiff vs real, top-1 % on {what}: " + "; ".join(parts))
    n = len(s.methods)
    noise = "" if s.seeds > 1 else "; with one seed, gaps of a point or two are within noise " \
                                   "(--seeds 3 gives a spread)"
    lines.append(f"MixDiff beats real for {wins['clean']} of {n} method(s) on clean and "
                 f"{wins['shifted']} of {n} on shifted data, by {min(gaps):+.1f} to "
                 f"{max(gaps):+.1f} points, over {s.seeds} seed(s) per mode{noise}.")
    return lines


# --- the driver --------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    weight: float  # a rough share of the time, for the progress bar's estimate
    run: Callable[[], dict]


def stages(s: QuickstartSettings, paths: Paths) -> list[Stage]:
    images = 10 * (s.per_class or 6000)
    train_cost = s.epochs * images / 400 * (3 if "dino" in s.methods else 1)
    plan = [Stage("prepare Fashion-MNIST", 5, lambda: _prepare(s, paths)),
            Stage("generate SDEdit twins", images / 8, lambda: _generate(s, paths))]
    for method, mode, seed in s.runs():
        name = s.run_name(method, mode, seed)
        plan.append(Stage(f"pretrain {name}", train_cost,
                          lambda m=method, d=mode, e=seed: _pretrain(s, paths, m, d, e)))
        plan.append(Stage(f"evaluate {name}", images / 100 * (2 + len(s.corruptions)),
                          lambda m=method, d=mode, e=seed: _evaluate(s, paths, m, d, e)))
    plan.append(Stage("report", 5, lambda: _report(s, paths)))
    return plan


@dataclass
class Outcome:
    settings: dict
    stages: list[dict] = field(default_factory=list)
    verdict: list[str] = field(default_factory=list)
    seconds: float = 0.0


def quickstart(out: str | Path, settings: QuickstartSettings, console: Console | None = None
               ) -> Outcome:
    """Run (or resume) every stage; returns what was done, with the verdict."""
    paths = Paths(Path(out))
    console = console or Console(stderr=True)
    outcome = Outcome(settings=asdict(settings))
    plan = stages(settings, paths)
    start = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("quickstart", total=sum(stage.weight for stage in plan))
        for number, stage in enumerate(plan, 1):
            progress.update(task, description=f"{number}/{len(plan)} {stage.name}")
            began = time.perf_counter()
            try:
                details = stage.run()
            except MixDiffError as exc:
                raise StageError(f"stage `{stage.name}` failed: {exc}\nFix it and run the same "
                                 "command again: the stages already done are reused.") from None
            except Exception as exc:  # a bug: keep the traceback where the user can send it
                log_file = paths.log(stage.name)
                log_file.parent.mkdir(parents=True, exist_ok=True)
                log_file.write_text(traceback.format_exc())
                raise StageError(f"stage `{stage.name}` failed: {type(exc).__name__}: {exc} "
                                 f"(traceback in {log_file})") from None
            seconds = time.perf_counter() - began
            outcome.stages.append({"stage": stage.name, "seconds": round(seconds, 1), **details})
            # a line per stage, for logs (the progress bar shows only on a terminal)
            log.info("%d/%d %s: %.1f min", number, len(plan), stage.name, seconds / 60)
            progress.advance(task, stage.weight)
    outcome.verdict = verdict(settings, paths)
    outcome.seconds = round(time.perf_counter() - start, 1)
    atomic_write_text(paths.record, json.dumps(asdict(outcome), indent=2, default=str) + "\n")
    return outcome


def settings_for(preset: str, **changes) -> QuickstartSettings:
    """A preset with the options the user gave (None: keep the preset's)."""
    return replace(PRESETS[preset], **{k: v for k, v in changes.items() if v is not None})
