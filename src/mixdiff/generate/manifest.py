"""The generation manifest: one JSON row per output, appended per shard, merged into one file.

OUT/manifests/shard-I-of-N.jsonl   appended as outputs are written (a killed run loses at most a
                                   partial last line, which readers skip); the source of truth
OUT/manifest.jsonl                 all shard files merged, one row per (source, variant); rebuilt
                                   from them by every rank that finishes, never read back

Each rank writes only its own shard file, so ranks never need to wait for each other: with
--overwrite a rank empties its own file, and removes only the files of another shard count,
which no rank of the current run writes.
"""

from __future__ import annotations

import fcntl
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from mixdiff.errors import DatasetError
from mixdiff.io import atomic_open
from mixdiff.paths import relative_inside

MANIFEST = "manifest.jsonl"
SHARDS = "manifests"
MERGE_LOCK = ".manifest.lock"  # serialises the merges of ranks that finish together
_SHARD_NAME = re.compile(r"shard-(\d+)-of-(\d+)\.jsonl")  # what shard_path() names


def shard_path(out: Path, index: int, count: int) -> Path:
    return out / SHARDS / f"shard-{index}-of-{count}.jsonl"


def shard_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / SHARDS).glob("shard-*.jsonl") if _SHARD_NAME.fullmatch(p.name))


def remove_other_shard_counts(out: Path, count: int) -> None:
    """Delete the shard files of a run split in another number of shards than `count`: no rank of
    a run split in `count` writes them, so no rank's current work is lost."""
    for path in shard_files(out):
        if int(_SHARD_NAME.fullmatch(path.name)[2]) != count:
            path.unlink(missing_ok=True)


# the fields every row has, and their types (`WorkItem.row`); a written one has its file's too
ROW_FIELDS = {"source": str, "variant": int, "status": str}
WRITTEN_FIELDS = {"path": str, "bytes": int}


def read_rows(path: Path) -> Iterator[dict]:
    """The rows of one shard file, each checked to be a row `generate` writes whose `source` is
    a path inside the real tree (a row edited to `../elsewhere.jpg`, or of another shape, is one
    line naming the file and line, not a KeyError or a path out of the tree)."""
    if not path.exists():
        return
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the partial last line of a killed run
                continue
            where = f"{path}, line {number}"
            fields = {**ROW_FIELDS, **WRITTEN_FIELDS} if isinstance(row, dict) and \
                row.get("status") == "ok" else ROW_FIELDS
            wrong = [name for name, kind in fields.items() if not isinstance(row, dict) or
                     not isinstance(row.get(name), kind) or isinstance(row.get(name), bool)]
            if wrong:
                raise DatasetError(f"{where}: not a row of `mixdiff generate` (no valid "
                                   f"{', '.join(wrong)}): the file is damaged; remove the line "
                                   "(its output is then made again), or run with --overwrite")
            relative_inside(row["source"], f"{where}: the row's `source`")
            yield row


def all_rows(out: Path) -> Iterator[dict]:
    """The rows of every shard file, each file in the order written (later rows win when
    deduplicated). Not the merged file: it may hold rows a --overwrite has since replaced."""
    for path in shard_files(out):
        yield from read_rows(path)


def latest(rows: Iterable[dict]) -> dict[tuple[str, int], dict]:
    """One row per (source, variant): the last one, but a success is never replaced by a failure."""
    chosen: dict[tuple[str, int], dict] = {}
    for row in rows:
        key = (row["source"], row["variant"])
        if row["status"] == "ok" or chosen.get(key, {}).get("status") != "ok":
            chosen[key] = row
    return chosen


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Serialise merges of ranks that finish together, so the last merge sees every shard."""
    with open(out / MERGE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge(out: Path) -> int:
    """Write OUT/manifest.jsonl from every row so far; returns its number of rows."""
    with _locked(out):
        rows = latest(all_rows(out))
        with atomic_open(out / MANIFEST, "w") as handle:
            for key in sorted(rows):
                handle.write(json.dumps(rows[key], sort_keys=True) + "\n")
    return len(rows)


class ShardWriter:
    """Appends rows to this shard's file, flushed after each batch; `fresh` empties it first. A
    context manager, so that the file is closed however the run ends."""

    def __init__(self, path: Path, fresh: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "w" if fresh else "a")

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.handle.write(json.dumps(row, sort_keys=True) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()
