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
    machine, so a missing GPU is one clear line, not a CUDA traceback at model load. Under
    torchrun or accelerate, which set LOCAL_RANK, 'auto' and 'cuda' are this rank's GPU,
    cuda:LOCAL_RANK (were every rank on cuda:0, they would share one GPU while the others idle)."""
    import torch

    rank = os.environ.get("LOCAL_RANK")
    if text in (None, AUTO):
        if not torch.cuda.is_available():
            return "cpu"
        text = "cuda" if rank is not None else "cuda:0"
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
        whose = ""
        if device.index is None and rank is not None:
            text, device = f"cuda:{rank}", torch.device("cuda", int(rank))
            whose = (f" (this rank's GPU, LOCAL_RANK={rank}: start at most {count} process(es) "
                     "per machine)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {text}: this machine has {count} CUDA GPU(s), "
                              f"cuda:0 to cuda:{count - 1}{whose}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {text}: Apple's MPS backend is not available here; "
                          "use --device cpu or auto")
    return text
