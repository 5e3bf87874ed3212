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
    """Weighted sums per metric name since the epoch began. A tensor's sum stays on the device it
    was made on (adding is not a host sync), a Python number's (the learning rate, the weight
    decay) on the host; they are read once, at the epoch's end."""

    sums: dict[str, Tensor | float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: Tensor | float, weight: float = 1.0) -> None:
        value = value.detach().float() * weight if isinstance(value, Tensor) else \
            float(value) * weight
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def means(self, device: torch.device) -> dict[str, Tensor]:
        """Every mean as an fp32 tensor on `device`, the module's: Lightning reduces a logged
        value across ranks on the value's own device, and NCCL serves CUDA tensors only."""
        return {name: torch.as_tensor(total / self.weights[name], dtype=torch.float32,
                                      device=device) for name, total in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.weights = {}, {}

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() if isinstance(v, Tensor) else v for k, v in self.sums.items()},
                "weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.weights = dict(state["sums"]), dict(state["weights"])
