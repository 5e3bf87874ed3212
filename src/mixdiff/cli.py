"""The `mixdiff` command line. Each command is a thin call into the package."""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from mixdiff.errors import MixDiffError

app = typer.Typer(help="MixDiff: self-supervised learning from real and synthetic images.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Prepare and check image datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True, soft_wrap=True)


def _fail(exc: MixDiffError) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2)


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
        _fail(exc)
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
        _fail(exc)
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


@app.command(context_settings={"allow_interspersed_args": True})
def pretrain(
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Config overrides, key=value (OmegaConf dotlist: data.synthetic=[A,B])."),
    config: Optional[Path] = typer.Option(None, "--config", help="A YAML config file."),
    out: Path = typer.Option(..., "--out", help="Run directory (re-run the same command there "
                             "to resume)."),
) -> None:
    """Pre-train an SSL method on real, synthetic or MixDiff-paired data."""
    from mixdiff.config import load_config
    from mixdiff.train import pretrain as run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config, overrides or [])
        run(cfg, out)
    except MixDiffError as exc:
        _fail(exc)
    console.print(f"run written to {out}: config.yaml, metrics.csv, checkpoints/last.ckpt")


if __name__ == "__main__":
    app()
