"""MixDiff: self-supervised pre-training on real images paired with diffusion-generated variations.

The stages, in the order data flows (each a folder of this package, each run alone from files):
`data` (image trees) -> `generate` (twins) -> `pretrain` (SimCLR, Barlow Twins, DINO) ->
`evaluate` (kNN, linear, robustness, transfer) -> `report`.

The public API is what this module exports (`__all__`): the names we keep stable. Everything
else may change between versions. The names load when first used, so `import mixdiff` is light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    # the pairing, for any training loop
    "PairedImageFolder": "mixdiff.pretrain.input.folder",
    # the losses: pure functions (and DINO's small module), distributed-safe
    "info_nce_loss": "mixdiff.pretrain.losses",
    "nt_xent_loss": "mixdiff.pretrain.losses",
    "barlow_twins_loss": "mixdiff.pretrain.losses",
    "DINOLoss": "mixdiff.pretrain.losses",
    # the stages as functions
    "GenerateSettings": "mixdiff.generate.settings",
    "generate": "mixdiff.generate.runner",
    "load_config": "mixdiff.config",
    "pretrain": "mixdiff.pretrain.train",
    "Encoder": "mixdiff.evaluate.features",
    "ImageSet": "mixdiff.evaluate.features",
    "labelled_sets": "mixdiff.evaluate.features",
    "knn_eval": "mixdiff.evaluate.knn",
    "linear_eval": "mixdiff.evaluate.linear",
    "SUITES": "mixdiff.evaluate.robustness",
    "robustness_eval": "mixdiff.evaluate.robustness",
    "transfer_eval": "mixdiff.evaluate.transfer",
    "write_report": "mixdiff.report.build",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mixdiff' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
