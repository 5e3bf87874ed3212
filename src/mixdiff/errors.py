"""Errors a user can act on. The CLI prints their message (which names the file, key or value)
and exits with status 2, without a traceback."""

from __future__ import annotations

import re


class MixDiffError(Exception):
    """Base class: anything the user can fix by changing an input."""


class ConfigError(MixDiffError):
    """An unknown config key, a value of the wrong type or outside the allowed set."""


class DatasetError(MixDiffError):
    """A dataset on disk is missing, empty or inconsistent."""


class UnreadableImageError(DatasetError):
    """An image file that cannot be opened or decoded."""

    SHOWN = 50  # files named in one message; `mixdiff data verify --json` lists them all
    _TRACEBACK_LINE = re.compile(r"UnreadableImageError: cannot read image (.+?): (.*)$", re.M)

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read image {path}: {reason}")

    @classmethod
    def many(cls, failures: list[tuple[str, str]]) -> "UnreadableImageError":
        """One error naming every unreadable file of a check (the first SHOWN of them)."""
        error = cls(*failures[0])
        lines = [f"  {path}: {reason}" for path, reason in failures[:cls.SHOWN]]
        if len(failures) > cls.SHOWN:
            lines.append(f"  ... and {len(failures) - cls.SHOWN} more (`mixdiff data verify "
                         "--json` lists every one)")
        error.args = (f"{len(failures)} unreadable image(s); fix or remove them:\n"
                      + "\n".join(lines),)
        return error

    @classmethod
    def from_failure(cls, exc: BaseException) -> "UnreadableImageError | None":
        """The unreadable image behind `exc`, also when a DataLoader worker raised it (PyTorch
        re-raises a worker's error as a RuntimeError holding its traceback as text)."""
        if isinstance(exc, cls):
            return exc
        match = cls._TRACEBACK_LINE.search(str(exc))
        return cls(match[1], match[2]) if match else None


class MissingSyntheticError(DatasetError):
    """Real images whose synthetic twin is absent from a synthetic root."""


class RunDirError(MixDiffError):
    """A run directory that holds a run made with a different config."""


class TorchFileError(RunDirError):
    """A file torch saved (a run's checkpoint, probe or feature cache, or a checkpoint from
    elsewhere) that is missing, damaged or not torch's."""


class UnsafeFileError(TorchFileError):
    """A torch file that asks to run code (a global outside the weights-only allow-list):
    refused."""


class UnsafePathError(MixDiffError):
    """A name that would write outside its folder, or a path read from one of our files that
    leads outside the folder it belongs to."""


class NonFiniteLossError(MixDiffError):
    """The training loss became NaN or infinite."""
