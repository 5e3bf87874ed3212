"""Names and paths that must stay inside their folder.

A name that a command writes under (`mixdiff eval ... --name`) is a file name, never a path: it
cannot climb out of the run folder with `..`, a separator or an absolute path. A data path read
from one of our files (a generation manifest's `path`, a scores file's `twin`) must resolve inside
the folder it belongs to, symbolic links followed: a file edited (or received) with
`../outside.jpg` or a link to elsewhere is refused, not read.
"""

from __future__ import annotations

import os
from pathlib import Path

from mixdiff.errors import UnsafePathError

_SEPARATORS = tuple(sep for sep in (os.sep, os.altsep, "/", "\\") if sep)


def file_name(name: str, what: str = "--name") -> str:
    """`name` if it is a plain file name, else one line saying why it is refused."""
    if not name or not name.strip():
        problem = "is empty"
    elif name in (".", ".."):
        problem = "names a folder, not a file"
    elif any(sep in name for sep in _SEPARATORS) or os.path.isabs(name):
        problem = "holds a path separator"
    elif "\0" in name:
        problem = "holds a NUL character"
    else:
        return name
    raise UnsafePathError(f"{what} {name!r} {problem}: it is a file name, written inside the run "
                          "folder; give a name without '/', '\\' or '..' (e.g. my-dataset)")


def inside(folder: str | Path, path: str | Path, source: str) -> Path:
    """`folder / path`, provided it resolves inside `folder` (links followed); else one line
    naming `source` (the file and entry the path was read from)."""
    folder = Path(folder)
    target = folder / path
    if target.resolve().is_relative_to(folder.resolve()):
        return target
    raise UnsafePathError(f"{source}: the path {str(path)!r} leads outside {folder} (to "
                          f"{target.resolve()}); a path in this file must name a file inside "
                          "that folder. Remove the entry (or the file), or make it again")
