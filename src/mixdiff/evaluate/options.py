"""How an evaluation encodes its images: one `EncodeOptions` for kNN, the linear probe, transfer,
the robustness suites and fidelity (torch-free, so the CLI's help loads fast). Each is checked by
the settings' rules when it is made, so a command refuses a bad number before any work (named as
its option: --batch-size, --num-workers, --k, --temperature)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mixdiff.schema import check, cli_option, setting


@dataclass(frozen=True)
class EncodeOptions:
    batch_size: int = setting(256, least=1)  # images per encoding batch
    # image decoding processes (None: up to features.MAX_WORKERS)
    num_workers: int | None = setting(None, least=0)
    show_progress: bool = True  # a progress bar on a terminal

    def __post_init__(self) -> None:
        check(asdict(self), EncodeOptions, cli_option)


@dataclass(frozen=True)
class KnnOptions:
    """`mixdiff eval knn`'s neighbours (the first is the headline) and vote temperature."""

    k: list[int] = setting(least=1)
    temperature: float = setting(above=0.0)

    def __post_init__(self) -> None:
        check(asdict(self), KnnOptions, cli_option)
