"""One writer per output folder: a second `mixdiff pretrain` (or `generate` on the same shard)
into a folder that another process is writing is refused at once, with one line naming the
holder. The lock is the operating system's (`flock`): it goes with its process, a SIGKILL
included, so there is never a stale lock to delete by hand. A reader can ask whether a folder is
being written now (`holder`: `mixdiff eval` of a run still training)."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mixdiff.errors import MixDiffError

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


class FolderInUseError(MixDiffError):
    """Another process is writing the output folder."""


def lock_name(part: str | None = None) -> str:
    """The lock file's name: one per folder, or one per `part` of it (a generation shard)."""
    return f".mixdiff-{part}.lock" if part else ".mixdiff.lock"


def launched_rank_zero() -> bool:
    """False in the processes that a distributed launcher (Lightning's, torchrun, SLURM) starts
    for ranks other than 0: the folder is rank 0's to hold, the others write into it too."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


@contextmanager
def exclusive(folder: Path, what: str, part: str | None = None) -> Iterator[None]:
    """Hold `folder`'s lock (or the lock of `part` of it) while the block runs; `what` names the
    holder to a process refused. A folder this call had to create is removed again if the block
    leaves nothing in it but the lock."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lock_name(part)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FolderInUseError(f"{folder} is being written by {holder}: wait for it to finish "
                               "(or stop it), or give another output folder") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"`{what}` (pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        yield
    finally:
        if created and [p.name for p in folder.iterdir()] == [path.name]:
            path.unlink(missing_ok=True)
            folder.rmdir()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def holder(folder: Path, part: str | None = None) -> str | None:
    """Who is writing `folder` now (the holder's line: command, pid, host, since when), or None
    when no live process holds its lock. Creates nothing."""
    try:
        handle = open(Path(folder) / lock_name(part))
    except OSError:  # no lock file: never written by a command that locks
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
