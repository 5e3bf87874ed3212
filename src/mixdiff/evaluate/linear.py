"""The offline linear probe: multinomial logistic regression on a run's frozen, standardised
features (L-BFGS, weight decay chosen on a stratified held-out part of the training images), scored
once on a val tree, and saved in the run with its class list for the robustness suites."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from mixdiff.errors import RunDirError, TorchFileError
from mixdiff.evaluate.features import Encoder, ImageSet
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.predictions import CLEAN, Predictions
from mixdiff.evaluate.logistic import LogisticSettings, select_and_fit, stratified_holdout
from mixdiff.evaluate.results import (TRAIN_FINGERPRINT, accuracies, refuse_another_measurement,
                                      result_name, write_result)
from mixdiff.io import atomic_open, file_sha256
from mixdiff.runs import PIXELS, RunDir

PROBE_SUFFIX = ".probe"  # RUN/eval/linear/<name>.probe.pt


@dataclass
class LinearProbe:
    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)
    mean: Tensor  # (D,) features are standardised with the training mean / std
    std: Tensor  # (D,)
    classes: tuple[str, ...]  # class names in output order (wnids for ImageNet runs)
    weight_decay: float
    dataset: str  # the dataset it was fitted on
    weights: str  # "student" | "teacher"
    checkpoint_sha256: str
    settings: dict
    name: str = field(default="", compare=False)  # its file's name (not saved in it)

    def logits(self, features: Tensor) -> Tensor:
        """(N, C) logits of raw (unstandardised) features, on the probe's device."""
        features = features.to(self.weight.device, torch.float32)
        return torch.addmm(self.bias, (features - self.mean) / self.std, self.weight.T)

    def to(self, device: torch.device | str) -> "LinearProbe":
        moved = {k: getattr(self, k).to(device) for k in ("weight", "bias", "mean", "std")}
        return LinearProbe(**{**asdict(self), **moved})

    def save(self, path: str | Path) -> None:
        state = {**asdict(self), "classes": list(self.classes)}
        del state["name"]
        with atomic_open(path, "wb") as handle:
            torch.save(state, handle)

    @classmethod
    def load(cls, path: str | Path) -> "LinearProbe":
        """The probe saved at `path`, or one line naming the file when it holds no such probe
        (other keys, tensors of other shapes)."""
        from mixdiff.torch_files import load_torch_file

        fix = "Delete it and fit it again with `mixdiff eval linear`"
        state = load_torch_file(path, "linear probe", fix)
        problem = _probe_problem(state)
        if problem:
            raise TorchFileError(f"linear probe {path} is not a probe of `mixdiff eval linear` "
                                 f"({problem}). {fix}")
        return cls(**{**state, "classes": tuple(state["classes"]), "name": probe_name(Path(path))})


def _probe_problem(state: object) -> str | None:
    """What keeps a saved object from being a LinearProbe's state, if anything."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    missing = [f.name for f in fields(LinearProbe) if f.name != "name" and f.name not in state]
    if missing:
        return f"no {', '.join(missing)}"
    tensors = {k: state[k] for k in ("weight", "bias", "mean", "std")}
    if not all(isinstance(t, Tensor) for t in tensors.values()):
        return "weight, bias, mean and std must be tensors"
    classes, dim = len(state["classes"]) if isinstance(state["classes"], (list, tuple)) else -1, \
        tensors["weight"].shape[-1]
    shapes = {"weight": (classes, dim), "bias": (classes,), "mean": (dim,), "std": (dim,)}
    wrong = [f"{k} {tuple(t.shape)}" for k, t in tensors.items() if tuple(t.shape) != shapes[k]]
    if wrong:
        return (f"for {classes} classes of {dim} features, tensors of other shapes: "
                f"{', '.join(wrong)}")
    return None


def probe_name(path: Path) -> str:
    return path.name.removesuffix(".pt").removesuffix(PROBE_SUFFIX)


def load_probe(run: RunDir, dataset: str | None = None, weights: str | None = None,
               checkpoint_sha256: str | None = None) -> LinearProbe:
    """The probe named `dataset` (or fitted on it), or the run's only probe. It must have been
    fitted on `weights` (when given) and on the run's current checkpoint (`checkpoint_sha256`, by
    default the sha256 of RUN/checkpoints/last.ckpt)."""
    paths = run.probes()
    fit_first = (f"run `mixdiff eval linear --run {run.root} --train DIR --val DIR` first to fit "
                 "one")
    if not paths:
        raise RunDirError(f"{run.root} has no linear probe: {fit_first}")
    if dataset is None and weights is not None and len(paths) > 1:
        # a run's probes of other weights (a DINO student probe, the raw-pixel floor's) are not
        # candidates for these weights
        paths = [p for p in paths if LinearProbe.load(p).weights == weights] or paths
    names = [probe_name(p) for p in paths]
    if dataset is None:
        if len(paths) > 1:
            raise RunDirError(f"{run.root} has {len(paths)} linear probes ({', '.join(names)}); "
                              "choose one with --probe NAME")
        chosen = paths[0]
    elif dataset in names:
        chosen = paths[names.index(dataset)]
    else:
        fitted_on = [p for p in paths if LinearProbe.load(p).dataset == dataset]
        if len(fitted_on) != 1:
            raise RunDirError(f"{run.root} has no linear probe named {dataset!r} (it has: "
                              f"{', '.join(names)}); choose one with --probe NAME, or {fit_first}")
        chosen = fitted_on[0]
    probe = LinearProbe.load(chosen)
    if weights is not None and probe.weights != weights:
        raise RunDirError(f"the probe {chosen} was fitted on the {probe.weights} weights, not the "
                          f"{weights}: pass --weights {probe.weights}, or fit a probe with "
                          f"`mixdiff eval linear --weights {weights}`")
    if probe.weights == PIXELS:  # the raw-pixel floor's probe depends on no checkpoint
        return probe
    current = checkpoint_sha256 or file_sha256(run.require_checkpoint())
    if probe.checkpoint_sha256 != current:
        raise RunDirError(f"the probe {chosen} was fitted on another checkpoint (sha256 "
                          f"{probe.checkpoint_sha256[:12]}) than the run's current one "
                          f"({current[:12]}): the run has trained since; fit it again with "
                          "`mixdiff eval linear`")
    return probe


# the weight decay chosen by the held-out cross-entropy (see evaluate.logistic)
LINEAR_SETTINGS = LogisticSettings(select_by="heldout_loss")


def linear_eval(encoder: Encoder, train: ImageSet, val: ImageSet, name: str | None = None,
                settings: LogisticSettings = LINEAR_SETTINGS,
                options: EncodeOptions = EncodeOptions()) -> Path:
    """Fit the probe on `train`, score it once on `val`; save the probe and the result in the run.
    Returns the result file."""
    name = result_name(train.name, encoder.weights, encoder.default_weights, name)
    scored, trained = val.content_sha256(), train.tree_fingerprint()
    refuse_another_measurement(encoder.run.eval_result("linear", name),
                               {"train": train.root, "val": val.root}, (len(val), scored), trained)
    x_train, x_val = encoder.encode(train, options=options), encoder.encode(val, options=options)
    y_train, y_val = torch.from_numpy(train.labels), torch.from_numpy(val.labels)
    fit_idx, held_idx = stratified_holdout(train.labels, settings.heldout_fraction, settings.seed)
    fitted = select_and_fit(x_train[fit_idx], y_train[fit_idx], x_train[held_idx],
                            y_train[held_idx], x_train, y_train, len(train.classes), "top1",
                            settings, encoder.device)
    classifier = fitted.classifier
    logits = classifier.logits(x_val)
    scores = accuracies(logits, y_val)
    predictions = Predictions.single(val.relative_names(), val.classes, val.labels,
                                     {CLEAN: logits.argmax(1).cpu().numpy()})
    weight_decay = fitted.sweep.best_weight_decay
    run_settings = {"train": train.root, "val": val.root, "train_images": len(train),
                    TRAIN_FINGERPRINT: trained,
                    "heldout_images": len(held_idx), **encoder.settings(),
                    "logistic": settings.record()}
    probe = LinearProbe(classifier.weight, classifier.bias, classifier.mean, classifier.std,
                        train.classes, weight_decay, train.name, encoder.weights,
                        encoder.checkpoint_sha256, run_settings)
    probe.save(encoder.run.probe(name))
    result = {
        "command": "linear",
        "protocol": "offline linear probe on frozen standardised features: multinomial logistic "
                    "regression (full-batch L-BFGS), weight decay chosen by the "
                    f"{'cross-entropy' if settings.select_by == 'heldout_loss' else 'top-1'} on "
                    f"a stratified {settings.heldout_fraction:.0%} held-out part of the training "
                    "images, refit "
                    "on all of them, scored once on the val images",
        "online": False, "dataset": val.name, "split": val.split,
        "classes": len(val.classes), "images": len(val), "images_sha256": scored,
        **scores,
        "metric": "top1", "value": scores["top1"], "weights": encoder.weights,
        "checkpoint": encoder.checkpoint_record(), "settings": run_settings,
        "details": {"probe": str(encoder.run.probe(name)), **fitted.record()},
    }
    return write_result(encoder.run, "linear", name, result, predictions)
