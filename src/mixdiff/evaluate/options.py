"""How an evaluation encodes its images: one `EncodeOptions` for kNN, the linear probe, transfer,
the robustness suites and fidelity (torch-free, so the CLI's help loads fast)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncodeOptions:
    batch_size: int = 256  # images per encoding batch
    num_workers: int | None = None  # image decoding processes (None: up to features.MAX_WORKERS)
    show_progress: bool = True  # a progress bar on a terminal
