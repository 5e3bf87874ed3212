"""What every benchmark needs to time a device and say which one it was."""

from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (a CPU runs eagerly: nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The card's name, or the CPU with its thread count, for a benchmark's table and JSON."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
