"""Check a real tree and its synthetic roots before a long run."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from mixdiff.data.tree import ImageTree, find_unreadable, match_twins

# What the "unreadable" lists of a report are based on (the report's "check" field).
DECODE, HEADER = "decode", "header"


def _unreadable(root: Path, relpaths: list[str], decode: bool, progress: Progress,
                label: str) -> list[dict]:
    action = "decoding" if decode else "reading the headers of"
    task = progress.add_task(f"{action} {label}", total=len(relpaths))
    failures = find_unreadable([root / rel for rel in relpaths], decode=decode,
                               on_checked=lambda: progress.advance(task))
    return [{"path": path, "reason": reason} for path, reason in failures]


def verify(real: str | Path, synthetic: list[str | Path] = (), decode: bool = True,
           show_progress: bool = False) -> dict:
    """The report `mixdiff data verify --json` prints. `check` says how "unreadable" was found:
    "decode" (every image fully decoded) or "header" (format and size parsed only, --no-decode:
    a file truncated after its header passes)."""
    tree = ImageTree.scan(real)
    console = Console(stderr=True)
    with Progress(console=console, transient=True,
                  disable=not (show_progress and console.is_terminal)) as progress:
        report = {"check": DECODE if decode else HEADER,
                  "real": {"root": str(tree.root), "images": len(tree),
                           "classes": len(tree.classes),
                           "unreadable": _unreadable(tree.root, list(tree.relpaths), decode,
                                                     progress, "real")},
                  "synthetic": []}
        for root in synthetic:
            match = match_twins(tree.relpaths, root)
            twins = list(match.matched.values()) + match.extra
            report["synthetic"].append({
                "root": str(root), "matched": len(match.matched), "missing": match.missing,
                "extra": match.extra,
                "unreadable": _unreadable(Path(root), twins, decode, progress, str(root))})
    return report


def problems(report: dict) -> int:
    """How many missing or unreadable files a report lists (what --strict fails on)."""
    count = len(report["real"]["unreadable"])
    for entry in report["synthetic"]:
        count += len(entry["missing"]) + len(entry["unreadable"])
    return count
