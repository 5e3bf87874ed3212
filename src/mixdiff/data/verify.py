"""Check a real tree and its synthetic roots before a long run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.progress import Progress

from mixdiff.data.tree import ImageTree, check_readable, match_twins


def _unreadable(root: Path, relpaths: list[str], progress: Progress | None, label: str
                ) -> list[dict]:
    """Decode every image on a few threads (PIL releases the GIL while decoding)."""
    task = progress.add_task(f"decoding {label}", total=len(relpaths)) if progress else None
    failures = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for rel, reason in zip(relpaths, pool.map(lambda r: check_readable(root / r), relpaths)):
            if reason is not None:
                failures.append({"path": str(root / rel), "reason": reason})
            if progress:
                progress.advance(task)
    return failures


def verify(real: str | Path, synthetic: list[str | Path] = (), decode: bool = True,
           show_progress: bool = False) -> dict:
    """The report `mixdiff data verify --json` prints (see its help for the fields)."""
    tree = ImageTree.scan(real)
    with Progress(transient=True, disable=not show_progress) as progress:
        report = {"real": {"root": str(tree.root), "images": len(tree),
                           "classes": len(tree.classes),
                           "unreadable": _unreadable(tree.root, list(tree.relpaths), progress,
                                                     "real") if decode else []},
                  "synthetic": []}
        for root in synthetic:
            match = match_twins(tree.relpaths, root)
            twins = list(match.matched.values()) + match.extra
            report["synthetic"].append({
                "root": str(root), "matched": len(match.matched), "missing": match.missing,
                "extra": match.extra,
                "unreadable": _unreadable(Path(root), twins, progress, str(root)) if decode else []})
    return report


def problems(report: dict) -> int:
    """How many missing or unreadable files a report lists (what --strict fails on)."""
    count = len(report["real"]["unreadable"])
    for entry in report["synthetic"]:
        count += len(entry["missing"]) + len(entry["unreadable"])
    return count
