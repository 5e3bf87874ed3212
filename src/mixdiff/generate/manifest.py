"""The generation manifest: one JSON row per output, appended per shard, merged into one file.

OUT/manifests/shard-I-of-N.jsonl   appended as outputs are written (a killed run loses at most a
                                   partial last line, which readers skip)
OUT/manifest.jsonl                 all shards merged, one row per (source, variant)
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from mixdiff.io import atomic_open

MANIFEST = "manifest.jsonl"
SHARDS = "manifests"


def shard_path(out: Path, index: int, count: int) -> Path:
    return out / SHARDS / f"shard-{index}-of-{count}.jsonl"


def read_rows(path: Path) -> Iterator[dict]:
    if not path.exists():
        return
    with open(path) as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # the partial last line of a killed run
                continue


def all_rows(out: Path) -> Iterator[dict]:
    """Rows of the merged manifest, then of every shard file (later rows win when deduplicated)."""
    yield from read_rows(out / MANIFEST)
    for path in sorted((out / SHARDS).glob("shard-*.jsonl")):
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
    with open(out / ".manifest.lock", "w") as lock:
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
    """Appends rows to this shard's file, flushed after each batch."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a")

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.handle.write(json.dumps(row, sort_keys=True) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()
