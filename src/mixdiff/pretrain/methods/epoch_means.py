"""The epoch means of the training metrics (loss, learning rate, the online probe's training
loss...), carried by every checkpoint: a run resumed mid-epoch writes the mean over the whole
epoch into metrics.csv, as the uninterrupted run does. Lightning's own `on_epoch` aggregation
starts again at a resume, so the resumed epoch's row would average only the batches after it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class EpochMeans:
    """Weighted sums per metric name since the epoch began. The sums stay on the device they were
    made on (adding is not a host sync); they are read once, at the epoch's end."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: Tensor | float, weight: float = 1.0) -> None:
        value = torch.as_tensor(value).detach().float() * weight
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def means(self) -> dict[str, Tensor]:
        return {name: total / self.weights[name] for name, total in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.weights = {}, {}

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.weights = dict(state["sums"]), dict(state["weights"])
