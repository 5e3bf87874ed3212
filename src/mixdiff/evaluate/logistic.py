"""Multinomial logistic regression on frozen features, fitted full-batch by L-BFGS, with the weight
decay chosen by a sweep on held-out data (the protocol of SynCLR's linear evaluation; shared by
`mixdiff eval linear` and `mixdiff eval transfer`).

The objective is  mean cross-entropy + weight_decay / 2 * ||W||^2  (the bias is not decayed), on
features standardised per dimension. The sweep walks the grid from the heaviest decay to the
lightest, each fit starting from the previous solution (a regularisation path: neighbouring
solutions are close, so each point needs few iterations), and stops once `patience` points in a
row score below the best; the refit on all the data starts from the best point's solution.

`mixdiff eval linear` chooses by the held-out cross-entropy (`select_by="heldout_loss"`), the
transfer protocol by the score, as SynCLR does. On a few hundred held-out images the score is
noise: a 150-epoch SimCLR run's sweep chose a decay of 3.2 (held-out top-1 77.5%, cross-entropy
1.07) over 0.03 (76.0%, 0.66) and scored 75.8% on the test images, against an online probe of
78.6% on the same features. The cross-entropy is a proper score, smooth in the decay.

Choosing by the score, equal held-out scores are told apart by the held-out cross-entropy: on a
plateau of equal scores, keeping the first (the heaviest decay) once chose a decay of 31.6 that
left the probe near-constant (training loss 2.03 for 10 classes): 72.1% on Fashion-MNIST's test
images, against 80.9% for the same features with this tie-break.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mixdiff.evaluate.results import METRICS


SELECT_BY = ("score", "heldout_loss")


@dataclass(frozen=True)
class LogisticSettings:
    # log10 of the weight-decay grid: 1e-6 (barely regularised) .. 1e2 (near-constant logits)
    # in half decades. The decay multiplies the MEAN loss, so the optimum moves with neither N
    # nor the class count; for standardised SSL features it sits around 1e-4..1e-2.
    grid_log10: tuple[float, float, int] = (-6.0, 2.0, 17)
    sweep_max_iter: int = 100  # L-BFGS iterations per grid point (warm-started)
    final_max_iter: int = 1000  # the refit (SynCLR: max_iter=1000)
    patience: int = 4  # stop the sweep after this many points in a row below the best
    # what chooses the weight decay: "score" (the metric; ties broken by the held-out
    # cross-entropy: SynCLR's transfer protocol) or "heldout_loss" (the held-out cross-entropy,
    # ties broken by the score: far less noisy when only a few hundred images are held out)
    select_by: str = "score"
    heldout_fraction: float = 0.2  # linear: the stratified part of the training set held out
    seed: int = 0
    history_size: int = 20
    tolerance_grad: float = 1e-6
    tolerance_change: float = 1e-9

    def grid(self) -> list[float]:
        """The weight decays, heaviest first (the order the sweep walks them)."""
        low, high, points = self.grid_log10
        return torch.logspace(high, low, int(points), dtype=torch.float64).tolist()

    def record(self) -> dict:
        return {**asdict(self), "grid_log10": list(self.grid_log10),
                "objective": "mean cross-entropy + weight_decay/2 * ||W||^2 (bias not decayed) "
                             "on standardised features; full-batch L-BFGS, strong Wolfe"}


@dataclass
class Standardised:
    """A linear classifier over features standardised with `mean` and `std`."""

    mean: Tensor  # (D,)
    std: Tensor  # (D,)
    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)

    def logits(self, features: Tensor) -> Tensor:
        features = features.to(self.weight.device, torch.float32)
        return torch.addmm(self.bias, (features - self.mean) / self.std, self.weight.T)

    def cpu(self) -> "Standardised":
        return Standardised(*(t.detach().cpu() for t in (self.mean, self.std, self.weight,
                                                           self.bias)))


@dataclass
class Fit:
    weight: Tensor
    bias: Tensor
    iterations: int
    evaluations: int
    loss: float


@dataclass
class SweepPoint:
    weight_decay: float
    score: float
    iterations: int
    heldout_loss: float  # mean cross-entropy on the held-out part: the tie-breaker

    def beats(self, other: SweepPoint | None, select_by: str = "score") -> bool:
        """select_by score: a higher score, or the same score with a lower held-out
        cross-entropy; heldout_loss: a lower held-out cross-entropy, or the same with a higher
        score."""
        if other is None:
            return True
        mine, theirs = self.ranked(select_by), other.ranked(select_by)
        return mine > theirs

    def ranked(self, select_by: str) -> tuple[float, float]:
        """The point's rank key (higher is better)."""
        return (self.score, -self.heldout_loss) if select_by == "score" else \
            (-self.heldout_loss, self.score)


@dataclass
class Sweep:
    metric: str
    select_by: str = "score"
    points: list[SweepPoint] = field(default_factory=list)
    best: Fit | None = None  # the fit at the chosen weight decay, on the sweep's training part
    chosen: SweepPoint | None = None
    stopped_early: bool = False

    @property
    def best_weight_decay(self) -> float:
        return self.chosen.weight_decay if self.chosen else float("nan")

    @property
    def best_score(self) -> float:
        return self.chosen.score if self.chosen else -1.0

    def record(self) -> dict:
        chosen_by = (f"the held-out {self.metric}, ties broken by the held-out cross-entropy"
                     if self.select_by == "score" else
                     f"the held-out cross-entropy, ties broken by the held-out {self.metric}")
        return {"metric": self.metric, "chosen_weight_decay": self.best_weight_decay,
                "chosen_score": self.best_score, "chosen_by": chosen_by,
                "stopped_early": self.stopped_early,
                "points": [asdict(p) for p in self.points]}


def standardisation(features: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std; a constant dimension (a dead unit) gets std 1, not 0."""
    mean, std = features.mean(dim=0), features.std(dim=0)
    return mean, torch.where(std < eps, torch.ones_like(std), std)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) indices: `fraction` of each class held out, at least one image of every
    class with two or more; seeded, so every run of the probe sees the same split."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        held.append(members[:count])
        fit.append(members[count:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def _objective(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, weight_decay: float) -> Tensor:
    return F.cross_entropy(torch.addmm(bias, x, weight.T), y) \
        + 0.5 * weight_decay * weight.square().sum()


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int,
                 settings: LogisticSettings, init: Fit | None = None) -> Fit:
    """Minimise the objective on standardised features `x` (on their device) with L-BFGS."""
    if init is None:  # W = 0 with the bias at its optimum for W = 0: the log class frequencies
        counts = torch.bincount(y, minlength=num_classes).clamp_min(1).to(x.dtype)
        init = Fit(x.new_zeros(num_classes, x.shape[1]), counts.log() - counts.sum().log(), 0, 0,
                   float("nan"))
    weight = init.weight.clone().requires_grad_(True)
    bias = init.bias.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                  history_size=settings.history_size,
                                  tolerance_grad=settings.tolerance_grad,
                                  tolerance_change=settings.tolerance_change,
                                  line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        optimizer.zero_grad(set_to_none=False)
        loss = _objective(x, y, weight, bias, weight_decay)
        loss.backward()
        return loss

    optimizer.step(objective)
    state = optimizer.state[weight]  # torch keeps the L-BFGS counters on the first parameter
    with torch.no_grad():
        loss = _objective(x, y, weight, bias, weight_decay).item()
    return Fit(weight.detach(), bias.detach(), int(state.get("n_iter", 0)),
               int(state.get("func_evals", 0)), loss)


def sweep_weight_decay(x_fit: Tensor, y_fit: Tensor, x_held: Tensor, y_held: Tensor,
                       num_classes: int, metric: str, settings: LogisticSettings) -> Sweep:
    """Fit at each weight decay of the grid on (x_fit, y_fit), score on the held-out part."""
    score_of = METRICS[metric]
    if settings.select_by not in SELECT_BY:
        raise ValueError(f"select_by {settings.select_by!r}: one of {SELECT_BY}")
    sweep, previous, worse = Sweep(metric, settings.select_by), None, 0
    for weight_decay in settings.grid():
        fit = fit_logistic(x_fit, y_fit, num_classes, weight_decay, settings.sweep_max_iter,
                           settings, init=previous)
        with torch.no_grad():
            logits = torch.addmm(fit.bias, x_held, fit.weight.T)
            point = SweepPoint(weight_decay, score_of(logits, y_held), fit.iterations,
                               F.cross_entropy(logits, y_held).item())
        sweep.points.append(point)
        previous = fit
        if point.beats(sweep.chosen, settings.select_by):
            sweep.best, sweep.chosen, worse = fit, point, 0
        elif point.ranked(settings.select_by)[0] < sweep.chosen.ranked(settings.select_by)[0]:
            worse += 1  # below the best (a tie on the first criterion is not)
            if worse >= settings.patience:
                sweep.stopped_early = True
                break
    return sweep


@dataclass
class ProbeFit:
    classifier: Standardised  # on the CPU
    sweep: Sweep
    final: Fit
    seconds: float

    def record(self) -> dict:
        return {"weight_decay_sweep": self.sweep.record(),
                "weight_decay": self.sweep.best_weight_decay,
                "final_iterations": self.final.iterations,
                "final_evaluations": self.final.evaluations,
                "final_loss": self.final.loss,
                "sweep_iterations": sum(p.iterations for p in self.sweep.points),
                "fit_seconds": round(self.seconds, 3)}


def select_and_fit(x_fit: Tensor, y_fit: Tensor, x_held: Tensor, y_held: Tensor, x_all: Tensor,
                   y_all: Tensor, num_classes: int, metric: str, settings: LogisticSettings,
                   device: torch.device) -> ProbeFit:
    """Choose the weight decay on (fit, held) with `metric`, then refit on (all).

    Each stage standardises with its own training statistics (fit for the sweep, all for the
    refit), as SynCLR does."""
    start = time.perf_counter()
    with _threads_for(x_all.shape[0] * x_all.shape[1] * num_classes, device):
        fitted = _select_and_fit(x_fit, y_fit, x_held, y_held, x_all, y_all, num_classes, metric,
                                 settings, device)
    return ProbeFit(*fitted, time.perf_counter() - start)


SMALL_PROBLEM = 2**26  # multiply-adds per logits pass below which one CPU thread is faster


@contextmanager
def _threads_for(work: int, device: torch.device) -> Iterator[None]:
    """One CPU thread for small problems: there L-BFGS is thousands of tiny ops, and waking
    OpenMP threads for each costs more than the op (16x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and work < SMALL_PROBLEM:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _select_and_fit(x_fit: Tensor, y_fit: Tensor, x_held: Tensor, y_held: Tensor, x_all: Tensor,
                    y_all: Tensor, num_classes: int, metric: str, settings: LogisticSettings,
                    device: torch.device) -> tuple[Standardised, Sweep, Fit]:
    def prepare(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        return (x.to(device, torch.float32) - mean) / std

    def labels(y: Tensor) -> Tensor:
        return y.to(device, torch.int64)

    mean, std = standardisation(x_fit.to(device, torch.float32))
    sweep = sweep_weight_decay(prepare(x_fit, mean, std), labels(y_fit),
                               prepare(x_held, mean, std), labels(y_held), num_classes, metric,
                               settings)
    mean, std = standardisation(x_all.to(device, torch.float32))
    final = fit_logistic(prepare(x_all, mean, std), labels(y_all), num_classes,
                         sweep.best_weight_decay, settings.final_max_iter, settings,
                         init=sweep.best)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Standardised(mean, std, final.weight, final.bias).cpu(), sweep, final
