"""`mixdiff data ...`: prepare, verify and plot image datasets."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from mixdiff.cli._app import app, console, fail
from mixdiff.errors import ConfigError, MixDiffError

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
    test_per_class: Optional[int] = typer.Option(
        None, "--test-per-class", min=1, help="The test split's own N (default: --per-class); "
        "1000 keeps all of Fashion-MNIST's 10,000 test images."),
) -> None:
    """Turn a dataset into an image tree OUT/<split>/<class>/<image>."""
    from mixdiff.data import fashion_mnist, imagenet100

    try:
        if dataset is Dataset.fashion_mnist:
            prepared = fashion_mnist.prepare(out, source or fashion_mnist.DEBIAN_DIR, per_class,
                                             test_per_class=test_per_class)
        else:
            if source is None:
                raise MixDiffError("imagenet100 needs --source IMAGENET_ROOT (with train/ and val/)")
            if per_class is not None or test_per_class is not None:
                raise MixDiffError("--per-class and --test-per-class apply to fashion-mnist only "
                                   "(imagenet100 links whole class folders)")
            linked = imagenet100.prepare(out, source)
    except MixDiffError as exc:
        fail(exc)
    if dataset is Dataset.fashion_mnist:
        for split, p in prepared.items():
            changes = [f"{p.written} written"]
            if p.repaired:
                changes.append(f"{p.repaired} rewritten (they did not hold their image: cut "
                               "short, or another)")
            if p.removed:
                changes.append(f"{p.removed} removed (left by an earlier prepare, not requested "
                               "now)")
            if p.foreign:
                changes.append(f"{p.foreign} not written by this command, left as they are")
            console.print(f"{out / split}: {p.images} images ({'; '.join(changes)})")
    else:
        for split, classes in linked.items():
            console.print(f"{out / split}: {classes} class folders linked into {source / split}")


@data_app.command("verify")
def data_verify(
    real: Path = typer.Option(..., "--real", help="The real image tree."),
    synthetic: List[Path] = typer.Option([], "--synthetic", help="A synthetic root (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    strict: bool = typer.Option(False, "--strict",
                                help="Exit 1 if any twin is missing or any image is unreadable."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Only check that each file opens "
                                   "as an image (its header), without decoding it: faster, but a "
                                   "file truncated after its header passes."),
    fidelity_run: Optional[Path] = typer.Option(
        None, "--fidelity", help="A run whose linear probe (`mixdiff eval linear`) judges each "
        "synthetic root: the share of twins it assigns to their real image's class, and the "
        "mean pixel distance. Use a run pre-trained on real images only."),
    probe: Optional[str] = typer.Option(None, "--probe", help="--fidelity: which of the run's "
                                        "probes (default: its only one)."),
    device: Optional[str] = typer.Option(None, "--device", help="--fidelity: cuda or cpu "
                                         "(default: the GPU when there is one)."),
    scores_file: Optional[Path] = typer.Option(
        None, "--scores", help="--fidelity: write one CSV row per twin (twin, real, root, "
        "class_kept: 1 when the probe gives the twin its real image's class, similarity: cosine "
        "of the two images' frozen features)."),
) -> None:
    """Count images and classes, match synthetic twins and decode every image; with --fidelity,
    measure how faithful each synthetic root is to the real images."""
    from mixdiff.data.verify import HEADER, problems, verify

    try:
        if scores_file is not None and fidelity_run is None:
            raise ConfigError("--scores needs --fidelity RUN: the run whose features and probe "
                              "score the twins")
        if scores_file is not None:
            from mixdiff.data.twin_scores import is_scores_file
            from mixdiff.outputs import refuse_replacing

            refuse_replacing(scores_file, f"--scores {scores_file}", "data verify",
                             is_scores_file)
        report = verify(real, synthetic, decode=not no_decode, show_progress=not as_json)
        if fidelity_run is not None:
            from mixdiff.data.twin_scores import write_scores
            from mixdiff.evaluate.fidelity import fidelity

            scores = [] if scores_file is not None else None
            for entry in report["synthetic"]:
                entry["fidelity"] = fidelity(real, entry["root"], fidelity_run, probe,
                                             device=device, show_progress=not as_json,
                                             scores=scores)
            if scores_file is not None:
                write_scores(scores_file, scores)
                if not as_json:
                    console.print(f"{scores_file}: {len(scores)} twins scored")
    except MixDiffError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        r = report["real"]
        how = " (header check only: nothing decoded)" if report["check"] == HEADER else ""
        console.print(f"real {r['root']}: {r['images']} images, {r['classes']} classes, "
                      f"{len(r['unreadable'])} unreadable{how}")
        _first(r["unreadable"], lambda bad: f"unreadable {bad['path']}: {bad['reason']}")
        for s in report["synthetic"]:
            console.print(f"synthetic {s['root']}: {s['matched']} matched, {len(s['missing'])} "
                          f"missing, {len(s['extra'])} extra, {len(s['unreadable'])} "
                          f"unreadable{how}")
            _first(s["missing"], lambda rel: f"missing twin of {rel}")
            _first(s["extra"], lambda rel: f"extra {rel} (no real image of that name)")
            _first(s["unreadable"], lambda bad: f"unreadable {bad['path']}: {bad['reason']}")
            if "fidelity" in s:
                f = s["fidelity"]
                console.print(f"  fidelity: {f['class_agreement']:.1%} of {f['twins']} twins keep "
                              f"their real image's class (the probe gets {f['real_accuracy']:.1%} "
                              f"of the real images right); mean pixel difference "
                              f"{f['mean_abs_pixel_difference']:.3f}", highlight=False)
                worst = sorted(f["class_agreement_per_class"].items(), key=lambda kv: kv[1])[:3]
                console.print("  least kept: " + ", ".join(f"{c} {v:.0%}" for c, v in worst),
                              highlight=False)
    if strict and problems(report):
        raise typer.Exit(1)


def _first(entries: list, describe, shown: int = 10) -> None:
    """One line for each of the first `shown` entries, then how many more there are."""
    for entry in entries[:shown]:
        console.print(f"  {describe(entry)}", highlight=False)
    if len(entries) > shown:
        console.print(f"  ... and {len(entries) - shown} more (--json lists them all)")


@data_app.command("grid")
def data_grid(
    real: Path = typer.Option(..., "--real", help="The real image tree."),
    synthetic: List[Path] = typer.Option(..., "--synthetic", help="A synthetic root (repeatable)."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    rows: int = typer.Option(8, "--rows", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Plot real images beside their synthetic twins."""
    from mixdiff.outputs import refuse_inside_images, refuse_replacing
    from mixdiff.report.figures import drawn_by
    from mixdiff.report.grid import GRID_COMMAND, pairs_grid

    try:
        refuse_inside_images(out, f"--out {out}", {f"--real {real}": real, **{
            f"--synthetic {root}": root for root in synthetic}})
        refuse_replacing(out, f"--out {out}", GRID_COMMAND, lambda p: drawn_by(p) == GRID_COMMAND)
        console.print(f"wrote {pairs_grid(real, synthetic, out, rows, seed)}")
    except MixDiffError as exc:
        fail(exc)
