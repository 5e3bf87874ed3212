"""`mixdiff quickstart`: the paper's experiment on Fashion-MNIST, offline, in minutes.

A driver of the real commands, nothing of its own: `data prepare`, `generate --generator sdedit`
(the embedded DDPM), `pretrain` of each method in each data mode and of the untrained reference
(`trainer.max_epochs=0`, one per seed), `eval linear`, `eval knn` and `eval robustness --suite
corruptions` of each run, `eval knn|linear --pixels` once, `report`, then the verdict: every
mode against the untrained encoder of its seed (did it learn?) and MixDiff against real, each a
difference paired by seed with its 95% interval. Every stage is resumable: running the command
again reuses whatever is complete.

OUT/
  quickstart.json          the settings, what each stage took, the comparisons and the verdict
  fashion-mnist/{train,test}/   a fixed class-stratified subset of Fashion-MNIST (data prepare)
  synthetic/v0/            one SDEdit variation of each training image (generate), at strength 0.3
  synthetic-strength-<values>/v0/   the same at another --strength (0.5, or a mixture 0.2+0.3+0.5)
  synthetic*/scores-<method>-s<seed>.csv   --filter: each twin scored by that seed's real run
  runs/<method>-<mode>-s<seed>/    pre-training runs with their evaluations (a twin mode's name
                           also says --strength, --synthetic-weight and --filter: -st0.5,
                           -w0.5, -min0.8)
  runs/untrained-s<seed>/  the seed's initial weights, evaluated alike (and the raw pixels)
  report/                  results.md, id_vs_ood.png, radar.png, curves.png, pairs.png
  logs/<stage>.log         the traceback of a stage that failed
"""

from __future__ import annotations

import json
import logging
import signal
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from mixdiff.config import METHOD_NAMES, MODE_NAMES
from mixdiff.errors import MixDiffError
from mixdiff.report.compare import EQUIVALENCE_MARGIN
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.io import atomic_write_text
from mixdiff.pretrain.callbacks import RunInterrupted
from mixdiff.runs import RunDir
from mixdiff.schema import check, cli_option, setting

if TYPE_CHECKING:
    import numpy as np

    from mixdiff.report.compare import Difference

log = logging.getLogger(__name__)

METHODS, MODES = METHOD_NAMES, MODE_NAMES
REAL, MIXDIFF, EXTRA = "real", "mixdiff", "extra"
PAPER_MODES = (REAL, "synthetic", MIXDIFF, "pooled")  # the paper's four (extra goes beyond it)
DATASET = "fashion-mnist"
UNTRAINED = "untrained"
DEFAULT_STRENGTH = 0.3  # SDEdit strength: keeps the class best (README, "Measured": fidelity)
SHIFT_SUITE = "corruptions"
ONLINE_VAL_IMAGES = 1000  # test images the online evaluation scores (a stratified subset)
# what the verdict and `comparisons` compare: metric -> (eval command, result name)
COMPARED = {"linear": ("linear", DATASET), "knn": ("knn", DATASET),
            "shift": ("robustness", SHIFT_SUITE)}


@dataclass(frozen=True)
class QuickstartSettings:
    """Everything the quickstart does; `PRESETS` hold the three sizes (fast, default, gpu)."""

    methods: tuple[str, ...] = setting(("simclr",), choices=METHODS)
    modes: tuple[str, ...] = setting((REAL, MIXDIFF), choices=MODES)
    seeds: int = setting(1, least=1)
    # training images per class (None: all 60,000), and test images per class (None: as many as
    # training; 1,000 or more: the whole test split of 10,000)
    per_class: int | None = setting(100, least=1)
    test_per_class: int | None = setting(None, least=1)
    # 50: the default quickstart stays within 20 minutes on a 2-core CPU without bf16 (fp32)
    epochs: int = setting(50, least=1)
    batch_size: int = setting(64, least=1)
    # optim.lr: per 256 images of batch (AdamW), so 1e-3 at batch 64
    lr: float = setting(4e-3, above=0.0)
    # SimCLR's (its preset's: 0.2); 0.1 learnt more here (README)
    temperature: float = setting(0.1, above=0.0)
    image_size: int = setting(32, least=1)
    small_stem: bool = False  # the CPU presets use ResNet-18's own stem: 16x fewer FLOPs at 32 px
    # SDEdit strength; a tuple: a mixture, each image draws its own (as generate --strength
    # 0.2,0.3,0.5)
    strength: float | tuple[float, ...] = setting(DEFAULT_STRENGTH, above=0.0, most=1.0)
    real_fraction: float = setting(1.0, above=0.0, most=1.0)  # the paper's "less real data"
    synthetic_weight: float = setting(1.0, above=0.0)  # extra mode's lambda (data.synthetic_weight)
    # --filter: each seed's real run scores the twins (data verify --scores), and the twin modes
    # train without those less similar than this to their real image (cosine of its features)
    min_similarity: float | None = setting(None, least=-1.0, most=1.0, option="--filter")
    # the verdict's "no difference larger than": a comparison whose whole 95% interval lies
    # within ±this (a fraction: 0.01 is 1 point)
    equivalence: float = setting(EQUIVALENCE_MARGIN, above=0.0, most=1.0)
    # "none": the paper's no-augmentation run (None: each method's own recipe)
    augment: str | None = setting(None, choices=("none",))
    corruptions: tuple[str, ...] = ("gaussian_noise", "defocus_blur", "contrast", "pixelate",
                                    "jpeg_compression", "sketch")
    severities: tuple[int, ...] = (3,)
    # epochs between online evaluations (each encodes val + bank)
    online_eval_every: int = setting(10, least=1)
    device: str = setting("cpu", choices=("cpu", "cuda"))
    workers: int = setting(2, least=0, produces=False)
    seed: int = 0
    smoke: bool = False  # --fast: every stage, too short to learn: no claim is made

    @property
    def encode_options(self) -> EncodeOptions:
        """How its evaluations encode: its workers, no progress bar (the quickstart shows one)."""
        return EncodeOptions(num_workers=self.workers, show_progress=False)

    def run_name(self, method: str, mode: str, seed: int) -> str:
        return f"{method}-{mode}{self.twin_suffix(mode)}-s{seed}"

    def twin_settings(self, mode: str) -> list[tuple[str, str]]:
        """What sets a twin mode's run apart from the default one, as (run-name part, the
        verdict's words), so that one --out holds both (and their comparisons share its real
        runs). A real run uses no twin: none."""
        if mode == REAL:
            return []
        found = []
        if not default_strength(self.strength):
            text = strength_text(self.strength)
            found.append((f"-st{text}", f"strength {text.replace('+', '/')}"))
        if mode == EXTRA and self.synthetic_weight != 1.0:
            found.append((f"-w{self.synthetic_weight:g}", f"lambda {self.synthetic_weight:g}"))
        if self.min_similarity is not None:
            found.append((f"-min{self.min_similarity:g}",
                          f"twins of similarity >= {self.min_similarity:g}"))
        return found

    def twin_suffix(self, mode: str) -> str:
        return "".join(part for part, _ in self.twin_settings(mode))

    def label(self, mode: str) -> str:
        """The mode as the verdict names it, with its twins' settings."""
        words = [text for _, text in self.twin_settings(mode)]
        name = {MIXDIFF: "MixDiff"}.get(mode, mode)
        return f"{name} ({', '.join(words)})" if words else name

    @property
    def ordered_modes(self) -> tuple[str, ...]:
        """Real first: the filter scores the twins with it, and the others are compared to it."""
        return tuple(sorted(self.modes, key=lambda mode: mode != REAL))

    def seed_list(self) -> range:
        return range(self.seed, self.seed + self.seeds)

    def runs(self) -> Iterator[tuple[str, str, int]]:
        """Seed by seed, so that an interrupted multi-seed quickstart holds whole seeds."""
        for seed in self.seed_list():
            for method in self.methods:
                for mode in self.ordered_modes:
                    yield method, mode, seed


def strengths(strength: float | tuple[float, ...]) -> tuple[float, ...]:
    return strength if isinstance(strength, tuple) else (strength,)


def default_strength(strength: float | tuple[float, ...]) -> bool:
    return strengths(strength) == (DEFAULT_STRENGTH,)


def strength_text(strength: float | tuple[float, ...]) -> str:
    """0.5 -> '0.5'; (0.2, 0.3, 0.5) -> '0.2+0.3+0.5' (for folder and run names)."""
    return "+".join(f"{value:g}" for value in strengths(strength))


def untrained_name(seed: int) -> str:
    return f"{UNTRAINED}-s{seed}"


PRESETS: dict[str, QuickstartSettings] = {
    # a smoke check: every stage, tiny sizes, far too short to learn (about 3 minutes)
    "fast": QuickstartSettings(modes=PAPER_MODES, per_class=20, epochs=2, batch_size=32,
                               online_eval_every=1, smoke=True,
                               corruptions=("gaussian_noise", "contrast", "sketch")),
    # the default on a CPU: real and MixDiff, long enough to learn (README: "Quickstart")
    "default": QuickstartSettings(),
    # --device cuda: the whole training set, the four modes and three methods, more epochs
    "gpu": QuickstartSettings(methods=METHODS, modes=PAPER_MODES, per_class=None, epochs=50,
                              batch_size=256, lr=1e-3, temperature=0.2, small_stem=True,
                              online_eval_every=5,
                              severities=(1, 2, 3, 4, 5), corruptions=(), device="cuda",
                              workers=8),
}


class QuickstartInterrupted(Exception):
    """Ctrl-C (or SIGTERM in a pre-training stage) stopped the quickstart; not an error."""

    def __init__(self, stage: str, signum: int):
        self.stage, self.signum = stage, signum
        super().__init__(f"stopped by {signal.Signals(signum).name} during stage `{stage}` (a "
                         "pre-training stage saves where it was); run the same command again to "
                         "continue: the stages already done are reused")


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

    def synthetic(self, strength: float | tuple[float, ...]) -> Path:
        """generate's folder for twins of this strength: one per strength (list), so that one
        --out holds the runs of several beside the real runs they are compared to."""
        if default_strength(strength):
            return self.out / "synthetic"
        return self.out / f"synthetic-strength-{strength_text(strength)}"

    def twins(self, strength: float | tuple[float, ...]) -> Path:
        return self.synthetic(strength) / "v0"

    def scores(self, strength: float | tuple[float, ...], method: str, seed: int) -> Path:
        return self.synthetic(strength) / f"scores-{method}-s{seed}.csv"

    @property
    def report(self) -> Path:
        return self.out / "report"

    @property
    def record(self) -> Path:
        return self.out / "quickstart.json"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    def run(self, name: str) -> RunDir:
        return RunDir(self.runs / name)

    def log(self, stage: str) -> Path:
        return self.out / "logs" / f"{stage.replace('/', '_')}.log"


def preset_config(method: str) -> Path:
    """The package's Fashion-MNIST preset of a method (configs/fashion_mnist/<method>.yaml)."""
    return Path(str(resources.files("mixdiff").joinpath(f"configs/fashion_mnist/{method}.yaml")))


def run_overrides(s: QuickstartSettings, paths: Paths, method: str, mode: str, seed: int,
                  epochs: int | None = None) -> list[str]:
    """The config of one run: the method's preset, then these (identical for every mode; the
    untrained reference differs only in `epochs`=0)."""
    overrides = {
        "data.real": paths.train, "data.val": paths.test,
        # a real run's config names the default twins whatever --strength is (it uses none), so
        # that the runs of every strength share it
        "data.synthetic": f"[{paths.twins(s.strength if mode != REAL else DEFAULT_STRENGTH)}]",
        "data.mode": mode, "data.real_fraction": s.real_fraction,
        "data.image_size": s.image_size, "data.num_workers": s.workers,
        "model.small_stem": s.small_stem,
        "trainer.max_epochs": s.epochs if epochs is None else epochs,
        "trainer.batch_size": s.batch_size, "optim.lr": s.lr, "trainer.seed": seed,
        "trainer.progress_bar": False,
        "trainer.accelerator": "gpu" if s.device == "cuda" else "cpu",
        "online_eval.knn_max_train_images": "null",
        # the online evaluation (every few epochs) scores a fixed-size subset of the test images,
        # whatever --test-per-class: the offline evaluation scores them all
        "online_eval.max_val_images": ONLINE_VAL_IMAGES,
        "online_eval.every_n_epochs": s.online_eval_every,
    }
    if method == "simclr":
        overrides["simclr.temperature"] = s.temperature
    if mode == EXTRA:
        overrides["data.synthetic_weight"] = s.synthetic_weight
    if mode != REAL and s.min_similarity is not None:
        overrides["data.synthetic_scores"] = paths.scores(s.strength, method, seed)
        overrides["data.synthetic_min_similarity"] = s.min_similarity
    if s.augment is not None:
        overrides["augment.recipe"] = s.augment
    return [f"{key}={value}" for key, value in overrides.items()]


# --- stages ------------------------------------------------------------------------------------
def _prepare(s: QuickstartSettings, paths: Paths) -> dict:
    from mixdiff.data import fashion_mnist

    splits = fashion_mnist.prepare(paths.data, per_class=s.per_class, show_progress=False,
                                   test_per_class=s.test_per_class)
    return {split: {"images": prepared.images, "written": prepared.written}
            for split, prepared in splits.items()}


def _generate(s: QuickstartSettings, paths: Paths) -> dict:
    from mixdiff.generate.runner import SettingsChangedError, generate
    from mixdiff.generate.settings import GenerateSettings

    settings = GenerateSettings(generator="sdedit", strength=s.strength, batch_size=100,
                                device=s.device, seed=s.seed)
    try:
        summary = generate(paths.train, paths.synthetic(s.strength), settings,
                           show_progress=False)
    except SettingsChangedError as exc:  # generate's advice (--overwrite) is not ours to give
        raise MixDiffError(f"{exc.out} holds the twins of another quickstart ({exc.details}): "
                           "use another --out for these settings, or the settings it was made "
                           f"with to reuse it (or delete {exc.out} and {paths.runs} to make "
                           "both again here)") from None
    if summary.failed:
        raise MixDiffError(f"{len(summary.failed)} images could not be generated, e.g. "
                           f"{summary.failed[0]['source']}: {summary.failed[0]['error']}")
    return {"written": summary.written, "reused": summary.skipped}


def _finished(run: RunDir, epochs: int) -> bool:
    """Whether `run` was made for `epochs` epochs and trained them all (a row for each in its
    metrics.csv; the untrained reference: `epochs` 0, a header only)."""
    if not (run.config.is_file() and run.metrics.is_file() and run.last_checkpoint.is_file()):
        return False
    if run.load_config().trainer.max_epochs != epochs:  # pretrain says what to do about it
        return False
    return len(run.metrics.read_text().strip().splitlines()) - 1 >= epochs


# the quickstart's option behind a config key of its runs (the others come with the preset)
OPTION_OF = {"trainer.max_epochs": "--epochs", "data.real_fraction": "--real-fraction",
             "augment.recipe": "--augment", "data.synthetic_weight": "--synthetic-weight",
             "data.synthetic_min_similarity": "--filter"}


def refuse_another_run(run: RunDir, cfg, train: Path) -> None:
    """A run of this --out made with other settings, or on other training images (another
    --per-class), is neither reused nor resumed with these, which would compare it with runs of
    these settings as if it were one of them: one line saying which run, what differs and what
    to do. More epochs than it was made for resume it (pretrain's `trainer.max_epochs`); fewer
    would not undo the ones it has. A run that saved no checkpoint is pretrain's to start
    afresh."""
    from omegaconf import OmegaConf

    from mixdiff.config import differing_keys
    from mixdiff.data.tree import fingerprint, fingerprint_changes
    from mixdiff.pretrain.train import resolve_hardware

    if not (run.config.is_file() and run.last_checkpoint.is_file()):
        return
    saved, cfg = run.load_config(), resolve_hardware(cfg)
    changed = {key: f"{OmegaConf.select(saved, key)!r} -> {OmegaConf.select(cfg, key)!r}"
               for key in differing_keys(saved, cfg)}
    if saved.trainer.max_epochs > cfg.trainer.max_epochs:
        changed["trainer.max_epochs"] = f"{saved.trainer.max_epochs} -> {cfg.trainer.max_epochs}"
    before = run.read_fingerprints().get("data.real")
    images = before and fingerprint_changes(before, fingerprint(train))
    if images:
        changed["the training images"] = images
    if changed:
        options = sorted({"--per-class" if key == "the training images" else
                          OPTION_OF.get(key, "the preset: --fast or not, --device")
                          for key in changed})
        raise MixDiffError(f"{run.root} was made with other settings than this call asks ("
                           f"{'; '.join(f'{k}: {v}' for k, v in changed.items())}): use another "
                           "--out for these settings, or the options it was made with "
                           f"({', '.join(options)})")


def _pretrain(s: QuickstartSettings, paths: Paths, method: str, mode: str, seed: int,
              name: str, epochs: int) -> dict:
    from mixdiff.config import load_config
    from mixdiff.pretrain.train import pretrain

    run = paths.run(name)
    cfg = load_config(preset_config(method), run_overrides(s, paths, method, mode, seed, epochs))
    refuse_another_run(run, cfg, paths.train)
    if _finished(run, epochs):
        return {"reused": True}
    pretrain(cfg, run.root)
    return {"reused": False}


def _current(run: RunDir, command: str, name: str, checkpoint_sha256: str | None,
             images_sha256: str, trained: dict | None) -> bool:
    """Whether the run already has this result, made from the checkpoint with this hash on the
    images with this fingerprint (and, where it records them, the training images `trained`),
    with its per-image predictions beside it."""
    from mixdiff.evaluate.results import read_result, train_images_changed

    path = run.eval_result(command, name)
    if not path.is_file():
        return False
    result = read_result(path)
    sidecar = result.get("predictions")
    return result["checkpoint"]["sha256"] == checkpoint_sha256 and \
        result.get("images_sha256") == images_sha256 and bool(sidecar) and \
        (path.parent / sidecar).is_file() and not train_images_changed(result, trained)


def _evaluate_encoder(s: QuickstartSettings, paths: Paths, encoder) -> list[str]:
    """Linear, kNN and the corruptions of one encoder (a run's, or the raw pixels), each unless
    it is current; the ones evaluated now."""
    from mixdiff.evaluate.features import labelled_sets
    from mixdiff.evaluate.knn import knn_eval
    from mixdiff.evaluate.linear import linear_eval
    from mixdiff.evaluate.predictions import PREDICTIONS_FILE
    from mixdiff.evaluate.results import result_name
    from mixdiff.evaluate.robustness import SUITES, parse_corruptions, robustness_eval

    train, test = labelled_sets(paths.train, paths.test, DATASET)
    scored, trained = test.content_sha256(), train.tree_fingerprint()
    suite = SUITES[SHIFT_SUITE]
    probe = result_name(DATASET, encoder.weights, encoder.default_weights)  # linear's result
    done = []
    for command, name, evaluate in (
            ("linear", DATASET, lambda: linear_eval(encoder, train, test,
                                                    options=s.encode_options)),
            ("knn", DATASET, lambda: knn_eval(encoder, train, test, options=s.encode_options)),
            ("robustness", suite.name, lambda: robustness_eval(
                encoder, suite, suite.scan(paths.test), probe,
                s.corruptions or parse_corruptions(None),  # none named: all of them
                s.severities, s.encode_options))):
        name = result_name(name, encoder.weights, encoder.default_weights)
        if not _current(encoder.run, command, name, encoder.checkpoint_sha256, scored, trained):
            # the quickstart's own result, of other images or an older checkpoint: replaced,
            # where `mixdiff eval` would refuse a result of other images under its name
            for stale in (encoder.run.eval_result(command, name),
                          encoder.run.eval_artifact(command, name, PREDICTIONS_FILE)):
                stale.unlink(missing_ok=True)
            evaluate()
            done.append(command)
    return done


def _evaluate(s: QuickstartSettings, paths: Paths, name: str) -> dict:
    from mixdiff.evaluate.features import Encoder

    return {"evaluated": _evaluate_encoder(s, paths, Encoder.from_run(paths.run(name),
                                                                      device=s.device))}


def _evaluate_pixels(s: QuickstartSettings, paths: Paths) -> dict:
    """The raw pixels as an encoder (`--pixels`), kept in the first untrained run: the floor,
    under the corruptions too."""
    from mixdiff.evaluate.features import Encoder

    return {"evaluated": _evaluate_encoder(s, paths, Encoder.pixels(
        paths.run(untrained_name(s.seed)), device=s.device))}


def _score_twins(s: QuickstartSettings, paths: Paths, method: str, seed: int) -> dict:
    """--filter: every twin scored by the seed's real run (its linear probe and features), as
    `mixdiff data verify --fidelity RUN --scores FILE` does."""
    from mixdiff.data.twin_scores import write_scores
    from mixdiff.evaluate.fidelity import fidelity

    scores = paths.scores(s.strength, method, seed)
    run = paths.run(s.run_name(method, REAL, seed))
    if scores.is_file() and scores.stat().st_mtime >= run.last_checkpoint.stat().st_mtime:
        return {"reused": True}
    rows: list[dict] = []
    found = fidelity(paths.train, paths.twins(s.strength), run.root, device=s.device,
                     show_progress=False, scores=rows)
    write_scores(scores, rows)
    similarity = sorted(row["similarity"] for row in rows)
    below = sum(value < s.min_similarity for value in similarity)
    return {"reused": False, "twins": len(rows),
            "class_agreement": round(found["class_agreement"], 4),
            "median_similarity": similarity[len(similarity) // 2], "dropped": below}


def _report_runs(s: QuickstartSettings, paths: Paths) -> list[Path]:
    return [paths.run(untrained_name(seed)).root for seed in s.seed_list()] + \
        [paths.run(s.run_name(*key)).root for key in s.runs()]


def _report(s: QuickstartSettings, paths: Paths) -> dict:
    from mixdiff.report.build import write_report

    report = write_report(_report_runs(s, paths), paths.report, margin=s.equivalence)
    return {"files": [str(f) for f in report.files], "notes": report.notes}


# --- the comparisons and the verdict -------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    """A run's number on one of COMPARED, with each test image's share of it."""

    value: float
    scores: "np.ndarray"  # evaluate.predictions.per_image_scores: their mean is `value`
    images_sha256: str  # the images scored


def scored(run: RunDir, metric: str) -> Scored:
    """The run's result on `metric` (one of COMPARED) and its per-image predictions."""
    from mixdiff.evaluate.predictions import per_image_scores, predictions_of
    from mixdiff.evaluate.results import read_result

    path = run.eval_result(*COMPARED[metric])
    result = read_result(path)
    return Scored(result["value"], per_image_scores(result, predictions_of(path, result)),
                  result["images_sha256"])


def _seed_results(s: QuickstartSettings, paths: Paths, run_of, metric: str
                  ) -> tuple[dict[int, float], dict[int, "np.ndarray"], set[str]]:
    """For the runs `run_of(seed)` names: seed -> the metric's value, seed -> each test image's
    score, and the fingerprints of the images scored."""
    found = {seed: scored(paths.run(run_of(seed)), metric) for seed in s.seed_list()}
    return ({seed: f.value for seed, f in found.items()},
            {seed: f.scores for seed, f in found.items()},
            {f.images_sha256 for f in found.values()})


@dataclass(frozen=True)
class Compared:
    """One comparison of the call: `mode − baseline` of `method` on `metric`."""

    method: str
    mode: str
    baseline: str
    metric: str
    difference: "Difference"

    def record(self) -> dict:
        return {"method": self.method, "metric": self.metric, "mode": self.mode,
                "baseline": self.baseline, **self.difference.record()}


def comparisons(s: QuickstartSettings, paths: Paths) -> list[Compared]:
    """Every mode against the untrained encoder, and every other mode against real, on the
    linear probe, kNN and the corruptions' mean ("shift"); paired by seed, on the same test
    images (checked by their fingerprint), with Holm's correction over all of them. `ci95` is the
    t-interval over seeds; the verdict uses the two-level one (seeds and test images)."""
    from mixdiff.report.compare import correct_for_many, paired_difference

    found = []
    for method in s.methods:
        for mode in s.ordered_modes:
            against = [UNTRAINED] + ([REAL] if mode != REAL and REAL in s.modes else [])
            for baseline in against:
                for metric in COMPARED:
                    values, scores, images = _seed_results(
                        s, paths, lambda e: s.run_name(method, mode, e), metric)
                    base, base_scores, base_images = _seed_results(
                        s, paths, untrained_name if baseline == UNTRAINED
                        else lambda e: s.run_name(method, baseline, e), metric)
                    if len(images | base_images) != 1:
                        raise MixDiffError(
                            f"{method} {mode} and {baseline} were scored on different test "
                            f"images ({metric}: {len(images | base_images)} image fingerprints): "
                            "run the quickstart again to evaluate them on today's test set")
                    found.append(Compared(method, mode, baseline, metric, paired_difference(
                        values, base, scores, base_scores, s.equivalence)))
    corrected = correct_for_many([c.difference for c in found])
    return [replace(c, difference=d) for c, d in zip(found, corrected)]


METRIC_WORDS = {"linear": "linear", "knn": "kNN", "shift": "corruptions"}


def verdict(s: QuickstartSettings, found: list[Compared]) -> list[str]:
    """What the comparisons say, per method: did each mode learn (its gain over the untrained
    encoder of the same seed), then each mode − real on each metric: a difference (surviving
    Holm's correction), no difference larger than the equivalence margin, or undecided (with
    the seeds it would take). With one seed there is no interval, and no claim."""
    lines = []
    if s.smoke:
        lines.append("--fast is a smoke check: every stage ran, but its runs are far too short "
                     "to learn; no number below is a claim about learning or about MixDiff.")
    one_seed = s.seeds == 1
    if one_seed:
        lines.append("One seed: no difference below has an interval, so none is a claim "
                     "(--seeds 3 gives 95% intervals).")
    else:
        family = next((c.difference.family for c in found if c.difference.holm is not None), 0)
        lines.append(f"{len(found)} comparisons, paired by seed on the same "
                     f"{_images(found)} test images; 95% intervals count the seeds' and the test "
                     f"images' noise; a difference must survive Holm's correction over the "
                     f"{family} that make a claim; 'no difference larger than "
                     f"{100 * s.equivalence:g} point(s)' where the whole interval lies within "
                     "that margin.")
    for method in s.methods:
        mine = [c for c in found if c.method == method]

        def differences(mode: str, baseline: str) -> dict:
            return {c.metric: c.difference for c in mine
                    if c.mode == mode and c.baseline == baseline}

        for mode in s.ordered_modes:
            gains = differences(mode, UNTRAINED)
            if one_seed:
                text = ", ".join(f"{METRIC_WORDS[m]} {gains[m].points()}" for m in COMPARED)
                lines.append(f"{method} · {s.label(mode)} − untrained: "
                             f"{text.replace(' (1 seed)', '')}")
                continue
            text = ", ".join(f"{METRIC_WORDS[m]} {gains[m].bracket()}" for m in COMPARED)
            learnt = all(gains[m].distinguishable and gains[m].difference > 0
                         for m in ("linear", "knn"))
            few = gains["linear"].distinguishable is None
            lines.append(f"{method} · {s.label(mode)} − untrained, points [95% CI, {s.seeds} "
                         "seeds]: "
                         f"{text}: " + (f"no claim ({s.seeds} seeds are too few)" if few else
                                        "it learnt (linear and kNN above the untrained encoder, "
                                        "differences after Holm's correction)" if learnt else
                                        "not shown to beat the untrained encoder"))
        for mode in s.ordered_modes if REAL in s.modes else ():
            if mode == REAL:
                continue
            versus, label = differences(mode, REAL), s.label(mode)
            if one_seed:
                lines.append(f"{method}: {label} − real: " + ", ".join(
                    f"{METRIC_WORDS[m]} {versus[m].points().replace(' (1 seed)', '')}"
                    for m in COMPARED) + " (1 seed: no claim)")
            else:
                lines += [versus[m].sentence(f"{method}: {label} − real, {METRIC_WORDS[m]}")
                          for m in COMPARED]
    if REAL not in s.modes or MIXDIFF not in s.modes:
        lines.append("MixDiff − real: not measured; run both modes (--modes real,mixdiff).")
    return lines


def _images(found: list[Compared]) -> str:
    counts = {c.difference.two_level.images for c in found if c.difference.two_level}
    return f"{counts.pop():,}" if len(counts) == 1 else "same"


# --- the driver --------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    weight: float  # a rough share of the time, for the progress bar's estimate
    run: Callable[[], dict]


def stages(s: QuickstartSettings, paths: Paths) -> list[Stage]:
    images = 10 * (s.per_class or 6000)
    train_cost = s.epochs * images / 100 * (3 if "dino" in s.methods else 1)
    eval_cost = images / 100 * (2 + len(s.corruptions))
    plan = [Stage("prepare Fashion-MNIST", 5, lambda: _prepare(s, paths)),
            Stage("generate SDEdit twins", images / 8, lambda: _generate(s, paths))]

    def run_stages(method: str, mode: str, seed: int, name: str, epochs: int) -> list[Stage]:
        cost = train_cost * (1.5 if mode == EXTRA else 1) if epochs else 5
        stages = [Stage(f"pretrain {name}", cost,
                        lambda: _pretrain(s, paths, method, mode, seed, name, epochs)),
                  Stage(f"evaluate {name}", eval_cost, lambda: _evaluate(s, paths, name))]
        if epochs and mode == REAL and s.min_similarity is not None:
            stages.append(Stage(f"score twins {method} s{seed}", images / 100,
                                lambda: _score_twins(s, paths, method, seed)))
        return stages

    for seed in s.seed_list():  # the reference first: a verdict needs it for every seed
        plan += run_stages(s.methods[0], REAL, seed, untrained_name(seed), 0)
        if seed == s.seed:
            plan.append(Stage("evaluate pixels", images / 100, lambda: _evaluate_pixels(s, paths)))
        for method, mode, run_seed in s.runs():
            if run_seed == seed:
                plan += run_stages(method, mode, seed, s.run_name(method, mode, seed), s.epochs)
    plan.append(Stage("report", 5, lambda: _report(s, paths)))
    return plan


@dataclass
class Outcome:
    settings: dict
    stages: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)  # Compared.record() of each
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
            except (RunInterrupted, KeyboardInterrupt) as exc:  # a stop, not a failure
                raise QuickstartInterrupted(stage.name, getattr(exc, "signum", signal.SIGINT)) \
                    from None
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
    found = comparisons(settings, paths)
    outcome.comparisons = [c.record() for c in found]
    outcome.verdict = verdict(settings, found)
    outcome.seconds = round(time.perf_counter() - start, 1)
    atomic_write_text(paths.record, json.dumps(asdict(outcome), indent=2, default=str) + "\n")
    return outcome


def settings_for(preset: str, **changes) -> QuickstartSettings:
    """A preset with the options the user gave (None: keep the preset's), checked before any
    stage runs (each named as its option, e.g. --strength)."""
    given = {k: v for k, v in changes.items() if v is not None}
    check(given, QuickstartSettings, cli_option)
    settings = replace(PRESETS[preset], **given)
    twin_modes = [mode for mode in settings.modes if mode != REAL]
    if settings.synthetic_weight != 1.0 and EXTRA not in settings.modes:
        raise MixDiffError("--synthetic-weight weights the twins that extra mode adds: add extra "
                           "to --modes (e.g. --modes real,mixdiff,extra)")
    if settings.min_similarity is not None and (REAL not in settings.modes or not twin_modes):
        raise MixDiffError("--filter scores the twins with the real run of each seed and trains "
                           "the twin modes without the dissimilar ones: --modes needs real and at "
                           "least one other mode (e.g. --modes real,mixdiff)")
    return settings
