"""Writing files so that a crash never leaves a half-written one behind, nor a temporary one for
long, and a full disk is said as such.

A file is written to a hidden temporary beside it (`.NAME.XXXXXXXX.tmp`), locked by its writer
while it is written, then renamed over the file. An error or a signal (SIGINT; the CLI turns
SIGTERM into one too) removes the temporary; after a SIGKILL the first write of a later command
into the same folder removes it (`remove_stale_temporaries`): a temporary whose lock nobody holds
is a dead writer's.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a full quota
# A temporary is only ever removed unlocked; it must also be this old, so that one just made,
# not yet locked by its writer, is never taken for a dead writer's.
STALE_AFTER_S = 60.0
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # tempfile.mkstemp's name, as atomic_open asks
_swept: set[Path] = set()  # the folders this process has swept


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename. On any
    error `path` is left as it was; a full disk is an OSError(ENOSPC) that names `path` (torch
    and other writers may report it as something else, with the OSError only as its cause)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # name the file asked for, not the hidden temporary one
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, mode) as handle:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until closed: the temporary's writer is alive
            os.chmod(tmp, 0o666 & ~_UMASK)  # what open() would have given, not mkstemp's 0600
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        full = no_space(exc)
        if full is not None:
            raise OSError(full.errno, os.strerror(full.errno), str(path)) from None
        stop = _behind(exc, KeyboardInterrupt)
        if stop is not None and stop is not exc:
            # a stop (Ctrl-C, the CLI's SIGTERM) inside a writer that reports it as its own
            # failure (torch.save: "unexpected pos"): a stop it is
            raise stop from None
        raise


def no_space(exc: BaseException | None) -> OSError | None:
    """The OSError of a full disk behind `exc` (itself, its cause or its context), if any; also
    where a library reports it in its own words, naming the operating system's error number as
    Rust's standard library writes it (safetensors: "No space left on device (os error 28)")."""
    full = _behind(exc, OSError, lambda found: found.errno in NO_SPACE)
    if full is not None:
        return full
    said = _behind(exc, BaseException, lambda found: _OS_ERROR.search(str(found)) is not None)
    if said is not None and int(_OS_ERROR.search(str(said))[1]) in NO_SPACE:
        number = int(_OS_ERROR.search(str(said))[1])
        return OSError(number, os.strerror(number))
    return None


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _behind(exc: BaseException | None, kind: type, test=lambda found: True):
    """The first exception of `kind` passing `test` in `exc`'s chain (itself, its cause or its
    context, and theirs), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind) and test(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries of atomic_open that a killed writer left in `folder` (once per
    folder and process: the first write there). A temporary whose writer is alive is locked, and
    kept; one too young to tell is kept too. Returns what was removed."""
    folder = Path(folder)
    if folder in _swept:
        return []
    _swept.add(folder)
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if TEMPORARY.fullmatch(e.name) and e.is_file()]
    except OSError:  # unreadable: the write itself will say so
        return []
    for entry in entries:
        try:
            if time.time() - entry.stat().st_mtime < STALE_AFTER_S:
                continue
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:  # gone already (its writer finished), or not ours to open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:  # locked: its writer is alive
            pass
        finally:
            os.close(fd)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
