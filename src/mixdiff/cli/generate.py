"""`mixdiff generate` and `mixdiff train-generator`."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Optional

import typer

from mixdiff.cli._app import app, console, fail, given
from mixdiff.devices import DEVICE_TYPES
from mixdiff.errors import MixDiffError
from mixdiff.generate.settings import (DEFAULTS, DTYPES, FORMATS, GENERATORS, SCHEDULERS,
                                       GenerateSettings)

DEFAULT = GenerateSettings()  # the one place the options' defaults come from
_GUIDANCE = ", ".join(f"{name} {default[3]}" for name, default in DEFAULTS.items())


@app.command()
def generate(  # each option's default is GenerateSettings' own (None: the generator's default)
    real: Path = typer.Option(..., "--real", help="The real image tree."),
    out: Path = typer.Option(..., "--out", help="Output root: OUT/v<k>/<relative path>."),
    generator: str = typer.Option(DEFAULT.generator, "--generator", help=", ".join(GENERATORS)),
    model: Optional[str] = typer.Option(None, "--model", help="Hugging Face id or local folder."),
    revision: Optional[str] = typer.Option(None, "--revision"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default 50)."),
    guidance: Optional[float] = typer.Option(None, "--guidance",
                                             help=f"Guidance scale (default: {_GUIDANCE})."),
    scheduler: str = typer.Option(DEFAULT.scheduler, "--scheduler", help="default (the "
                                  "pipeline's own), " + ", ".join(SCHEDULERS[1:])),
    resolution: Optional[int] = typer.Option(
        None, "--resolution", help="Output side in pixels (a multiple of 8 for the latent "
        "generators; sdedit: the UNet's own, other sides are resized after denoising)."),
    variants: int = typer.Option(DEFAULT.variants, "--variants", help="Variations per real image."),
    seed: int = typer.Option(DEFAULT.seed, "--seed"),
    batch_size: int = typer.Option(DEFAULT.batch_size, "--batch-size"),
    dtype: str = typer.Option(DEFAULT.dtype, "--dtype", help="auto (fp16 on GPU, fp32 on CPU), "
                              + ", ".join(DTYPES[1:])),
    device: str = typer.Option(DEFAULT.device, "--device", help="auto (this rank's GPU, else the "
                               "CPU), " + ", ".join(DEVICE_TYPES) + ", cuda:N"),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: this process's share "
                                        "(default: from torchrun/accelerate, else 0/1)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N real images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in an OUT made with "
                                   "other settings."),
    safety_checker: bool = typer.Option(DEFAULT.safety_checker,
                                        "--safety-checker/--no-safety-checker"),
    strength: str = typer.Option(str(DEFAULT.strength), "--strength",
                                 help="sdedit: noise level to start from; a comma-separated list "
                                 "(0.2,0.3,0.5) is a mixture: each image draws one from its own "
                                 "seed, recorded in its manifest row."),
    noise_level: str = typer.Option(str(DEFAULT.noise_level), "--noise-level",
                                    help="unclip: image-embedding noise (a list: a mixture, as "
                                    "--strength)."),
    image_format: str = typer.Option(DEFAULT.format, "--format",
                                     help=", ".join(FORMATS) + " (jpg: fast to decode)."),
    quality: int = typer.Option(DEFAULT.quality, "--quality", help="jpg/webp quality."),
    save_size: Optional[int] = typer.Option(
        None, "--save-size", help="Store each twin with its short side resized to N px (the "
        "MixDiff authors stored 256); default: as generated."),
    compile_unet: Optional[bool] = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the denoiser (default: on a GPU; "
        "about a minute of compilation, then ~1.5x faster)."),
) -> None:
    """Generate diffusion variations of every real image: sharded, resumable, deterministic."""
    from mixdiff.generate.manifest import MANIFEST
    from mixdiff.generate.runner import generate as run
    from mixdiff.generate.settings import parse_shard, parse_values

    logging.basicConfig(level=logging.WARNING)
    try:
        settings = GenerateSettings(
            generator=generator, model=model, revision=revision, steps=steps, guidance=guidance,
            scheduler=scheduler, resolution=resolution, variants=variants, seed=seed,
            batch_size=batch_size, dtype=dtype, device=device,
            strength=parse_values(strength, float, "--strength"),
            noise_level=parse_values(noise_level, int, "--noise-level"), format=image_format, quality=quality, save_size=save_size,
            safety_checker=safety_checker, compile=compile_unet)
        summary = run(real, out, settings, parse_shard(shard) if shard else None, limit,
                      overwrite)
    except MixDiffError as exc:
        fail(exc)
    console.print(f"{out}: {summary.written} written ({summary.images_per_second:.2f} img/s), "
                  f"{summary.skipped} already there, {len(summary.failed)} failed, of "
                  f"{summary.planned} in this shard")
    for row in summary.failed[:10]:
        console.print(f"  failed {row['source']} (variant {row['variant']}): {row['error']}")
    if summary.interrupted:
        console.print(f"[bold yellow]stopped by Ctrl-C: what was written is kept and listed in "
                      f"{out / MANIFEST}; run the same command again to continue[/]",
                      highlight=False)
        raise typer.Exit(128 + signal.SIGINT)
    if summary.failed:
        raise typer.Exit(1)


@app.command("train-generator")
def train_generator(
    data: Path = typer.Option(..., "--data", help="Image tree to learn (e.g. Fashion-MNIST train)."),
    out: Path = typer.Option(..., "--out", help="Folder for the DDPMPipeline (safetensors)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Image side in pixels."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 (grey) or 3 (RGB)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
) -> None:
    """Train the small DDPM that `generate --generator sdedit` uses by default. An option left
    out keeps the value that made the shipped weights (see its training.json)."""
    from mixdiff.generate.embedded import GeneratorTraining, previous_training
    from mixdiff.generate.embedded import train_generator as run

    cfg = GeneratorTraining(**given(steps=steps, batch_size=batch_size, resolution=resolution,
                                    channels=channels, lr=lr, seed=seed))
    try:
        cfg.check()
        if previous_training(out, data, cfg) is not None:
            console.print(f"{out}: already trained on {data} with these settings; nothing to do",
                          highlight=False)
            return
        record = run(data, out, cfg)
    except MixDiffError as exc:
        fail(exc)
    console.print(f"{out}: {record['settings']['steps']} steps in {record['seconds']} s, "
                  f"loss {record['loss_first_200']} -> {record['final_loss_mean_last_200']}")
