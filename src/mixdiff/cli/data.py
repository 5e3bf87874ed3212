"""`mixdiff data ...`: prepare, verify and plot image datasets."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from mixdiff.cli._app import app, console, fail
from mixdiff.errors import MixDiffError

data_app = typer.Typer(help="Prepare and check image datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class Dataset(str, Enum):
    fashion_mnist = "fashion-mnist"
    imagenet100 = "imagenet100"


@data_app.command("prepare")
def data_prepare(
    dataset: Dataset = typer.Argument(..., help="fashion-mnist or imagenet100"),
    out: Path = typer.Option(..., "--out", help="Folder to write the image tree to."),
    source: Optional[Path] = typer.Option(
        None, "--source", help="fashion-mnist: folder of the four idx files (default: Debian's "
        "/usr/share/datasets/fashion-mnist). imagenet100: ImageNet root with train/ and val/ "
        "class folders."),
    per_class: Optional[int] = typer.Option(None, "--per-class", min=1,
                                            help="Keep only the first N images of each class."),
) -> None:
    """Turn a dataset into an image tree OUT/<split>/<class>/<image>."""
    from mixdiff.data import fashion_mnist, imagenet100

    try:
        if dataset is Dataset.fashion_mnist:
            counts = fashion_mnist.prepare(out, source or fashion_mnist.DEBIAN_DIR, per_class)
        else:
            if source is None:
                raise MixDiffError("imagenet100 needs --source IMAGENET_ROOT (with train/ and val/)")
            counts = imagenet100.prepare(out, source)
    except MixDiffError as exc:
        fail(exc)
    for split, n in counts.items():
        console.print(f"{out / split}: {n} images")


@data_app.command("verify")
def data_verify(
    real: Path = typer.Option(..., "--real", help="The real image tree."),
    synthetic: List[Path] = typer.Option([], "--synthetic", help="A synthetic root (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    strict: bool = typer.Option(False, "--strict",
                                help="Exit 1 if any twin is missing or any image is unreadable."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Skip decoding every image."),
) -> None:
    """Count images and classes, match synthetic twins and decode every image."""
    from mixdiff.data.verify import problems, verify

    try:
        report = verify(real, synthetic, decode=not no_decode, show_progress=not as_json)
    except MixDiffError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        r = report["real"]
        console.print(f"real {r['root']}: {r['images']} images, {r['classes']} classes, "
                      f"{len(r['unreadable'])} unreadable")
        for bad in r["unreadable"][:10]:
            console.print(f"  unreadable {bad['path']}: {bad['reason']}")
        for s in report["synthetic"]:
            console.print(f"synthetic {s['root']}: {s['matched']} matched, {len(s['missing'])} "
                          f"missing, {len(s['extra'])} extra, {len(s['unreadable'])} unreadable")
            for rel in s["missing"][:10]:
                console.print(f"  missing twin of {rel}")
            for bad in s["unreadable"][:10]:
                console.print(f"  unreadable {bad['path']}: {bad['reason']}")
    if strict and problems(report):
        raise typer.Exit(1)


@data_app.command("grid")
def data_grid(
    real: Path = typer.Option(..., "--real", help="The real image tree."),
    synthetic: List[Path] = typer.Option(..., "--synthetic", help="A synthetic root (repeatable)."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    rows: int = typer.Option(8, "--rows", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Plot real images beside their synthetic twins."""
    from mixdiff.report.grid import pairs_grid

    try:
        console.print(f"wrote {pairs_grid(real, synthetic, out, rows, seed)}")
    except MixDiffError as exc:
        fail(exc)
