"""Errors a user can act on. The CLI prints their message (which names the file, key or value)
and exits with status 2, without a traceback."""


class MixDiffError(Exception):
    """Base class: anything the user can fix by changing an input."""


class ConfigError(MixDiffError):
    """An unknown config key, a value of the wrong type or outside the allowed set."""


class DatasetError(MixDiffError):
    """A dataset on disk is missing, empty or inconsistent."""


class UnreadableImageError(DatasetError):
    """An image file that cannot be opened or decoded."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read image {path}: {reason}")


class MissingSyntheticError(DatasetError):
    """Real images whose synthetic twin is absent from a synthetic root."""


class RunDirError(MixDiffError):
    """A run directory that holds a run made with a different config."""


class NonFiniteLossError(MixDiffError):
    """The training loss became NaN or infinite."""
