"""Reading a file that torch saved (a checkpoint, a linear probe, a feature cache): it never runs
code.

`torch.save` pickles, and unpickling may call any function it names: a checkpoint downloaded from
a colleague or the web could run `os.system` the moment it is opened. Every torch file is read
here, with `weights_only=True`: torch's restricted unpickler, which rebuilds tensors and plain
containers (dict, list, tuple, OrderedDict, numbers, strings) and calls nothing else. A file that
asks for anything more is refused, naming the file and what it asks for.

The globals allowed are torch's own default set, plus, for one load only, the classes a caller
names in `allow` (a checkpoint from elsewhere holding a harmless container: the official DINO
checkpoints carry their `argparse.Namespace`). Classes other libraries add to torch's allow-list
for the whole process are not allowed here: our own files need none
(`tests/test_torch_files.py` checks every kind we write).
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from mixdiff.errors import TorchFileError, UnsafeFileError

ZIP_START = b"PK\x03\x04"
# torch.save's format before PyTorch 1.6 opens with this pickled magic number
LEGACY_START = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def global_name(allowed: type) -> str:
    """How a pickle (and torch's messages) name a class or function: `module.qualname`."""
    return f"{allowed.__module__}.{allowed.__qualname__}"


@contextmanager
def _only(allow: Iterable[Any]) -> Iterator[None]:
    """torch's own allow-list plus `allow`, and nothing that another library added to it for the
    whole process (torch keeps one list; it is put back as it was afterwards)."""
    import torch.serialization as serialization

    before = serialization.get_safe_globals()
    serialization.clear_safe_globals()
    serialization.add_safe_globals(list(allow))
    try:
        yield
    finally:
        serialization.clear_safe_globals()
        serialization.add_safe_globals(before)


def _asked_for(path: Path) -> list[str]:
    """The globals the file's pickle names that the current allow-list lacks (read statically,
    nothing is unpickled); [] where the pickle cannot be read that way (the load then says why)."""
    import torch.serialization as serialization

    try:
        return sorted(serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a damaged or odd pickle: torch.load below names its problem
        return []


def _refusal(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, without its advice to load with
    weights_only=False (which would run the file's code)."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", text)
    if found:
        return f"it asks for {found[1]}"
    lines = [line.strip() for line in text.partition("WeightsUnpickler error:")[2].splitlines()
             if line.strip()]
    return "its pickle holds more than tensors and plain containers" + \
        (f" ({lines[0]})" if lines else "")


def load_torch_file(path: str | Path, what: str = "file", fix: str = "",
                    allow: Iterable[type] = (), mmap: bool = False) -> Any:
    """The object torch saved in `path`, read with weights_only=True, or one line (a
    TorchFileError) naming the file and what is wrong: missing, empty, cut short, not torch's,
    or asking for a global outside torch's defaults and `allow` (UnsafeFileError: refused, since a
    file may not run code). `what` names the kind of file in messages ("checkpoint", "linear
    probe"); `fix` says what to do about a damaged or refused one. `mmap`: map the tensors rather
    than read them (when only some are wanted)."""
    import torch

    path = Path(path)
    fix = f". {fix}" if fix else ""
    if not path.is_file():
        raise TorchFileError(f"{what} not found: {path}")
    allow = tuple(allow)
    with open(path, "rb") as handle:
        start = handle.read(len(LEGACY_START))
    if not start:
        problem = "is empty"
    elif start.startswith(LEGACY_START):
        problem = ("is in torch's format from before PyTorch 1.6, which is not read here: "
                   "load it with torch.load(weights_only=True) and torch.save it again")
    elif not zipfile.is_zipfile(path):  # torch's own error would advise saving with mmap
        problem = ("is cut short (a zip archive without its end: a write that did not finish)"
                   if start.startswith(ZIP_START) else
                   f"is not a PyTorch {what} (not the zip archive that torch.save writes)")
    else:
        with _only(allow):
            asked = _asked_for(path)
            if asked:
                raise UnsafeFileError(_unsafe(path, what, f"it asks for {', '.join(asked)}",
                                              allow, fix))
            try:
                with warnings.catch_warnings():  # its advice to file an issue about the protocol
                    warnings.filterwarnings("ignore", message=".*pickle protocol.*")
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except pickle.UnpicklingError as exc:
                raise UnsafeFileError(_unsafe(path, what, _refusal(exc), allow, fix)) from None
            except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
                problem = f"cannot be read by torch ({str(exc).strip().splitlines()[0]})"
    raise TorchFileError(f"{what} {path} {problem}{fix}")


def _unsafe(path: Path, what: str, reason: str, allow: tuple, fix: str) -> str:
    allowed = f", and {', '.join(map(global_name, allow))} allowed for it" if allow else ""
    return (f"{what} {path} is refused: {reason}, and a {what} may not run "
            f"code (it is read with torch.load(weights_only=True): tensors and plain containers "
            f"only{allowed}){fix}")
