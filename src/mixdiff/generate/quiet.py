"""Keep diffusers' and transformers' chatter out of a generation run's output.

Loading a pipeline prints advice nobody asked for ("install accelerate"), deprecation notes meant
for library developers, and one tqdm bar per component and per weight file, all interleaved with
our own progress bar. Inside `quiet_libraries()` those are dropped; everything else the libraries
log (missing weights, errors) still reaches the user. Downloads keep huggingface_hub's progress
bars: they are the only sign of life during a long download.
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import ExitStack, contextmanager
from typing import Iterator

# Messages from the libraries' loggers that say nothing about the user's data or model.
NOISE = re.compile("|".join((
    r"`accelerate` was not found",  # diffusers loads without accelerate, only slower
    r"should be kept in float32: \[\]",  # diffusers 0.42 warns on .to(dtype) with an empty list
    r"\bdeprecat",  # API changes addressed to code that calls the library, not to its user
)), re.IGNORECASE)
LIBRARIES = ("diffusers", "transformers")
# The modules whose FutureWarning / DeprecationWarning are silenced (re.match on the module name).
WARNING_MODULES = r"(diffusers|transformers|huggingface_hub|torch)(\.|$)"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(record.getMessage())


def _handlers() -> list[logging.Handler]:
    """Every handler a library record can reach: the libraries' own, and the root logger's
    (transformers propagates to it when CI is set)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.get_verbosity()  # attaches the library's handler if it is not there yet
    found = [h for name in LIBRARIES for h in logging.getLogger(name).handlers]
    return found + [h for h in logging.getLogger().handlers if h not in found]


@contextmanager
def _library_progress_bars_off() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging

    with ExitStack() as stack:
        if diffusers_logging.is_progress_bar_enabled():
            diffusers_logging.disable_progress_bar()
            stack.callback(diffusers_logging.enable_progress_bar)
        try:  # transformers >= 5: a hook on its own bars only (disable_progress_bar would also
            # silence huggingface_hub's download bars)
            from transformers.utils.logging import set_tqdm_hook
        except ImportError:
            set_tqdm_hook = None
        if set_tqdm_hook is not None:
            previous = set_tqdm_hook(
                lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
            stack.callback(set_tqdm_hook, previous)
        yield


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Drop the libraries' noise (see the module's docstring) until the block ends."""
    drop = _DropNoise()
    handlers = _handlers()
    for handler in handlers:
        handler.addFilter(drop)
    try:
        with warnings.catch_warnings(), _library_progress_bars_off():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=WARNING_MODULES)
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)
