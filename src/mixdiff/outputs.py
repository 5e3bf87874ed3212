"""Files a command writes where its user names them (`export --out`, `data verify --scores`,
`data grid --out`, `attention --out`, the files of `report --out DIR`): such a file never
replaces one of a run folder's own files, which the run's other commands write and read back
(`RunDir.owns`: config.yaml, data.json, metrics.csv, checkpoints/, logs/, eval/, cache/), and it
replaces an existing file only when that file is recognisably the same command's earlier output
(a second run of it). A user's file, or another command's, is refused before any work. A figure
is never written inside an image folder the command reads (`refuse_inside_images`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mixdiff.errors import MixDiffError
from mixdiff.runs import OWN_IN_WORDS, RunDir


class ReplacingError(MixDiffError):
    """A command's output would replace a file it did not write."""


def refuse_replacing(target: str | Path, given: str, command: str,
                     earlier: Callable[[Path], bool]) -> None:
    """Refuse to write `target` (`given`: the option as the user gave it, e.g. "--out x.png")
    where it would be a run folder's own file, or replace a file for which `earlier(target)`
    (is it `mixdiff <command>`'s earlier output?) is false."""
    target = Path(target)
    run = RunDir.enclosing(target)
    if run is not None and run.owns(target):
        raise ReplacingError(f"{given}: {target} would be among the run folder {run.root}'s own "
                             f"files ({OWN_IN_WORDS}), which other commands write and read; "
                             f"give another {given.split()[0]} (outside those, e.g. beside the run folder)")
    if target.exists() and not (target.is_file() and earlier(target)):
        raise ReplacingError(f"{given}: {target} exists and was not written by an earlier "
                             f"`mixdiff {command}`, so it is not replaced; give another "
                             f"{given.split()[0]}, or delete it first")


def refuse_inside_images(target: str | Path, given: str, folders: dict[str, Path]) -> None:
    """Refuse to write `target` inside an image folder the command reads (`folders`: how each is
    named to the user, e.g. "--real data/real", -> the folder): a figure there is an image of
    that tree, which every later scan of it (training included) would read as one of its own."""
    where = Path(target).resolve()
    for named, folder in folders.items():
        if where.is_relative_to(Path(folder).resolve()):
            raise ReplacingError(f"{given}: {target} lies inside {named}, an image folder this "
                                 "command reads, where the figure would be taken for one of its "
                                 "images (by training too); give another "
                                 f"{given.split()[0]} (outside it)")
