"""The one reading of a --device option, for every stage that takes one (generation, evaluation).

Pre-training sets its devices through Lightning (`trainer.accelerator`, `trainer.devices`).
"""

from __future__ import annotations

import os

from mixdiff.errors import ConfigError

AUTO = "auto"
DEVICE_TYPES = ("cpu", "cuda", "mps")  # what --device accepts, besides auto


def resolve_device(text: str | None = AUTO) -> str:
    """'auto' -> this rank's GPU if there is one, else 'cpu'; anything else is checked against the
    machine, so a missing GPU is one clear line, not a CUDA traceback at model load."""
    import torch

    if text in (None, AUTO):  # under torchrun/accelerate each rank takes its own GPU
        return f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(f"--device {text!r} is not one of: auto, {', '.join(DEVICE_TYPES)}, "
                          "cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {text}: no CUDA GPU is visible on this machine "
                              "(torch.cuda.is_available() is False); use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {text}: this machine has {count} CUDA GPU(s), "
                              f"cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {text}: Apple's MPS backend is not available here; "
                          "use --device cpu or auto")
    return text
