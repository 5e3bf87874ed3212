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
        _fail(exc)


report_app = typer.Typer(help="Plots and tables of runs.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("curves")
def report_curves(
    runs: List[Path] = typer.Argument(..., help="Run directories of `mixdiff pretrain`."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
) -> None:
    """Plot training loss and the online kNN / probe accuracy of runs, epoch by epoch."""
    from mixdiff.report.curves import plot_curves

    try:
        console.print(f"wrote {plot_curves(runs, out)}")
    except MixDiffError as exc:
        _fail(exc)


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


@app.command()
def generate(
    real: Path = typer.Option(..., "--real", help="The real image tree."),
    out: Path = typer.Option(..., "--out", help="Output root: OUT/v<k>/<relative path>."),
    generator: str = typer.Option("sd-image-variations", "--generator",
                                  help="sd-image-variations, versatile-diffusion, unclip, sdedit"),
    model: Optional[str] = typer.Option(None, "--model", help="Hugging Face id or local folder."),
    revision: Optional[str] = typer.Option(None, "--revision"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default 50)."),
    guidance: Optional[float] = typer.Option(None, "--guidance",
                                             help="Guidance scale (sd-image-variations: 3.0)."),
    scheduler: str = typer.Option("default", "--scheduler", help="default (the pipeline's own), "
                                  "ddim, pndm, dpm-solver++, euler, euler-ancestral, ddpm"),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Output side in pixels."),
    variants: int = typer.Option(1, "--variants", help="Variations per real image."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(8, "--batch-size"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on GPU, fp32 on CPU), fp32, "
                              "fp16, bf16"),
    device: str = typer.Option("auto", "--device"),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: this process's share "
                                        "(default: from torchrun/accelerate, else 0/1)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N real images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in an OUT made with "
                                   "other settings."),
    safety_checker: bool = typer.Option(False, "--safety-checker/--no-safety-checker"),
    strength: float = typer.Option(0.5, "--strength", help="sdedit: noise level to start from."),
    noise_level: int = typer.Option(0, "--noise-level", help="unclip: image-embedding noise."),
    image_format: str = typer.Option("png", "--format", help="png, jpg, webp"),
    quality: int = typer.Option(95, "--quality", help="jpg/webp quality."),
    compile_unet: Optional[bool] = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the denoiser (default: on a GPU; "
        "about a minute of compilation, then ~1.5x faster)."),
) -> None:
    """Generate diffusion variations of every real image: sharded, resumable, deterministic."""
    from mixdiff.generate.runner import generate as run
    from mixdiff.generate.settings import GenerateSettings, parse_shard

    logging.basicConfig(level=logging.WARNING)
    try:
        settings = GenerateSettings(
            generator=generator, model=model, revision=revision, steps=steps, guidance=guidance,
            scheduler=scheduler, resolution=resolution, variants=variants, seed=seed,
            batch_size=batch_size, dtype=dtype, device=device, strength=strength,
            noise_level=noise_level, format=image_format, quality=quality,
            safety_checker=safety_checker, compile=compile_unet)
        summary = run(real, out, settings, parse_shard(shard) if shard else None, limit,
                      overwrite)
    except MixDiffError as exc:
        _fail(exc)
    console.print(f"{out}: {summary.written} written ({summary.images_per_second:.2f} img/s), "
                  f"{summary.skipped} already there, {len(summary.failed)} failed, of "
                  f"{summary.planned} in this shard")
    for row in summary.failed[:10]:
        console.print(f"  failed {row['source']} (variant {row['variant']}): {row['error']}")
    if summary.failed:
        raise typer.Exit(1)


@app.command("train-generator")
def train_generator(
    data: Path = typer.Option(..., "--data", help="Image tree to learn (e.g. Fashion-MNIST train)."),
    out: Path = typer.Option(..., "--out", help="Folder for the DDPMPipeline (safetensors)."),
    steps: int = typer.Option(2500, "--steps"),
    batch_size: int = typer.Option(64, "--batch-size"),
    resolution: int = typer.Option(32, "--resolution"),
    channels: int = typer.Option(1, "--channels", help="1 (grey) or 3 (RGB)."),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the small DDPM that `generate --generator sdedit` uses by default."""
    from mixdiff.generate.embedded import GeneratorTraining
    from mixdiff.generate.embedded import train_generator as run

    try:
        record = run(data, out, GeneratorTraining(resolution=resolution, channels=channels,
                                                  steps=steps, batch_size=batch_size, lr=lr,
                                                  seed=seed))
    except MixDiffError as exc:
        _fail(exc)
    console.print(f"{out}: {record['settings']['steps']} steps in {record['seconds']} s, "
                  f"loss {record['loss_first_200']} -> {record['final_loss_mean_last_200']}")


if __name__ == "__main__":
    app()
