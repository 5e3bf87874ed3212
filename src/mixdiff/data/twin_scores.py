"""Twin scores: one row per synthetic twin (`mixdiff data verify --fidelity RUN --scores FILE`),
and the rule that keeps or drops a twin by them (`data.synthetic_min_similarity`,
`data.synthetic_require_class_kept`). A twin that lost its class is a false positive pair for
every method (GenView, AdaInf: not every generated positive helps)."""

from __future__ import annotations

import csv
import io
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
                                       f"{', '.join(missing)}); write one with `mixdiff data "
                                       "verify --fidelity RUN --scores FILE.csv`")
                # a twin is scored only as a file of its synthetic root (links followed)
                scores = {inside(row["root"], Path(row["twin"]).absolute(),
                                 f"{path}, line {line}").resolve():
                          (row["class_kept"] == "1", float(row["similarity"]))
                          for line, row in enumerate(reader, start=2)}
        except FileNotFoundError:
            raise DatasetError(f"config key `data.synthetic_scores`: {path} not found; write "
                               "it with `mixdiff data verify --fidelity RUN --scores FILE.csv`"
                               ) from None
        except ValueError as exc:
            raise DatasetError(f"{path}: a row that is not a score ({exc})") from None
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
