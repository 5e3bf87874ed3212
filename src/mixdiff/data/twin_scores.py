"""Twin scores: one row per synthetic twin (`mixdiff data verify --fidelity RUN --scores FILE`),
and the rule that keeps or drops a twin by them (`data.synthetic_min_similarity`,
`data.synthetic_require_class_kept`). A twin that lost its class is a false positive pair for
every method (GenView, AdaInf: not every generated positive helps)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from mixdiff.errors import DatasetError
from mixdiff.io import atomic_write_text
from mixdiff.paths import inside

# The columns of a scores file, in order
SCORE_COLUMNS = ("twin", "real", "root", "class_kept", "similarity")


def write_scores(path: str | Path, rows: list[dict]) -> None:
    """Twins' scores (dicts of SCORE_COLUMNS) as CSV, written atomically: a kill leaves the old
    file or none."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SCORE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(path), text.getvalue())


def is_scores_file(path: str | Path) -> bool:
    """Whether `path` is a scores file `write_scores` wrote: its first line is their header."""
    try:
        with open(path, newline="") as handle:
            return handle.readline().rstrip("\r\n") == ",".join(SCORE_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


WRITE = "`mixdiff data verify --fidelity RUN --scores FILE.csv`"  # the command that writes one
# what to do about a row of a scores file that is not a score
REWRITE = f"the file is damaged: write it again with {WRITE}"


def _similarity(value: str | None, where: str) -> float:
    """A row's similarity: a finite number (NaN passes no `>=` and would keep or drop a twin by
    accident, unseen)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise DatasetError(f"{where}: similarity {value!r} is not a finite number; {REWRITE}")
    return number


def _class_kept(value: str | None, where: str) -> bool:
    if value not in ("0", "1"):
        raise DatasetError(f"{where}: class_kept {value!r} is neither 1 nor 0; {REWRITE}")
    return value == "1"


@dataclass
class TwinFilter:
    """Which twins a run uses: those scored at least `min_similarity` (None: any), and with
    `require_class_kept` only those the probe still gave their real image's class. Counts the
    twins it drops (data.json's `synthetic_twins_dropped`)."""

    scores: dict[Path, tuple[bool, float]]  # resolved twin path -> (class kept, similarity)
    source: str  # the scores file, for messages
    min_similarity: float | None = None
    require_class_kept: bool = False
    dropped: int = 0

    @classmethod
    def read(cls, path: str | Path, min_similarity: float | None,
             require_class_kept: bool) -> "TwinFilter":
        try:
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                missing = [c for c in ("twin", "root", "class_kept", "similarity")
                           if c not in (reader.fieldnames or [])]
                if missing:
                    raise DatasetError(f"{path}: not a twin scores file (no column "
                                       f"{', '.join(missing)}); write one with {WRITE}")
                scores = {}
                for line, row in enumerate(reader, start=2):
                    where = f"{path}, line {line}"
                    if row["twin"] is None or row["root"] is None:
                        raise DatasetError(f"{where}: a row cut short; {REWRITE}")
                    # a twin is scored only as a file of its synthetic root (links followed)
                    twin = inside(row["root"], Path(row["twin"]).absolute(), where).resolve()
                    scores[twin] = (_class_kept(row["class_kept"], where),
                                    _similarity(row["similarity"], where))
        except FileNotFoundError:
            raise DatasetError(f"config key `data.synthetic_scores`: {path} not found; write "
                               f"it with {WRITE}") from None
        return cls(scores, str(path), min_similarity, require_class_kept)

    def keeps(self, twin: str) -> bool:
        score = self.scores.get(Path(twin).resolve())
        if score is None:
            raise DatasetError(f"{twin} has no row in {self.source}: score these synthetic "
                               "roots (`mixdiff data verify --real R --synthetic S --fidelity "
                               "RUN --scores FILE.csv`)")
        class_kept, similarity = score
        keep = (class_kept or not self.require_class_kept) and \
            (self.min_similarity is None or similarity >= self.min_similarity)
        self.dropped += not keep
        return keep

    def describe(self) -> str:
        rules = ([f"similarity >= {self.min_similarity}"] if self.min_similarity is not None
                 else []) + (["class kept"] if self.require_class_kept else [])
        return f"{' and '.join(rules) or 'every scored twin'} ({self.source})"
