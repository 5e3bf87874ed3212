"""Names and paths that must stay inside their folder.

A name that a command writes under (`mixdiff eval ... --name`) is a file name, never a path: it
cannot climb out of the run folder with `..`, a separator or an absolute path. A data path read
from one of our files (a generation manifest's `path`, a scores file's `twin`) must resolve inside
the folder it belongs to, symbolic links followed: a file edited (or received) with
`../outside.jpg` or a link to elsewhere is refused, not read.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

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


def leads_outside(folder: str | Path, path: str | Path) -> Path | None:
    """Where `folder / path` leads when that is outside `folder` (links followed), else None."""
    target = (Path(folder) / path).resolve()
    return None if target.is_relative_to(Path(folder).resolve()) else target


def first_link(folder: str | Path, path: str | Path) -> Path | None:
    """The first symbolic link on the way from `folder` down to `folder / path`, if any."""
    here = Path(folder)
    for part in Path(path).parts:
        here = here / part
        if here.is_symlink():
            return here
    return None


def kept_inside(folder: str | Path, parts: tuple[str, ...], kind: str, holds: str) -> Path:
    """`folder / parts` (a file or folder a command writes and reads there), provided it lies
    inside `folder` once links are followed; else one line naming the link on the way, where it
    leads and what to do (`kind`: what `folder` is, e.g. "run folder"; `holds`: what its own
    files are). `folder` itself may be a link: what is inside it stays inside."""
    path = Path(folder).joinpath(*parts)
    relative = path.relative_to(folder)
    target = leads_outside(folder, relative)
    if target is None:
        return path
    link = first_link(folder, relative) or path
    raise UnsafePathError(
        f"{link} is a link to {link.resolve()}, outside the {kind} {folder}: {holds} stay inside "
        "it, where its commands write and read them. Replace the link by a folder (or file) of "
        f"its own, or to keep the {kind} elsewhere, move the whole {kind} there and link "
        f"{folder} itself")


def inside(folder: str | Path, path: str | Path, source: str) -> Path:
    """`folder / path`, provided it resolves inside `folder` (links followed); else one line
    naming `source` (the file and entry the path was read from)."""
    folder = Path(folder)
    target = leads_outside(folder, path)
    if target is None:
        return folder / path
    raise UnsafePathError(f"{source}: the path {str(path)!r} leads outside {folder} (to "
                          f"{target}); a path in this file must name a file inside "
                          "that folder. Remove the entry (or the file), or make it again")


def relative_inside(path: str, source: str) -> str:
    """`path` as read from one of our files, provided it is a relative path that stays inside the
    folder it is relative to by its own words (no `..`, not absolute): for a path whose folder is
    not at hand to resolve it in (a generation manifest's `source`, relative to the real tree)."""
    parts = PurePosixPath(path.replace("\\", "/")).parts if isinstance(path, str) else ()
    if parts and "\0" not in path and parts[0] != "/" and ".." not in parts:
        return path
    raise UnsafePathError(f"{source}: the path {path!r} leads outside the folder it is relative "
                          "to; a path in this file must name a file inside that folder. Remove "
                          "the entry (or the file), or make it again")
