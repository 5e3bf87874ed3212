"""The embedded generator: a small DDPM (`UNet2DModel`) trained on Fashion-MNIST, shipped inside
the package so that `mixdiff generate --generator sdedit` works offline out of the box.

`mixdiff train-generator` trains it; the package's copy was made with the defaults below (see
`EMBEDDED_DIR / "training.json"` for the steps, time and loss it took).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mixdiff.data.tree import ImageTree, load_rgb
from mixdiff.errors import ConfigError, UnreadableImageError
from mixdiff.generate.quiet import quiet_libraries
from mixdiff.io import atomic_write_text, no_space
from mixdiff.schedules import warmup_cosine
from mixdiff.schema import (check, cli_option, differences, identity, not_producing,
                            seed_setting, setting)

EMBEDDED_ID = "embedded:fashion-mnist-ddpm"  # the --model name of the shipped weights
EMBEDDED_DIR = Path(__file__).parent / "weights" / "fashion-mnist-ddpm"
TRAINING_RECORD = "training.json"  # beside the weights: the data and settings that made them


@dataclass
class GeneratorTraining:
    """Settings of `mixdiff train-generator` (defaults: what made the shipped weights)."""

    resolution: int = setting(32, least=1)
    channels: int = setting(1, choices=(1, 3), hint="1: grey, as Fashion-MNIST; 3: RGB")
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = setting(1, least=1)
    train_timesteps: int = setting(1000, least=1)
    steps: int = setting(2500, least=1)
    batch_size: int = setting(64, least=1)
    lr: float = setting(1e-3, above=0.0)
    warmup_steps: int = setting(200, least=0)
    seed: int = seed_setting()
    num_workers: int = setting(2, least=0, produces=False)
    bf16: bool = True  # autocast

    def check(self) -> None:
        """Refuse a value that would crash or hang the training (named as the CLI option)."""
        check(asdict(self), GeneratorTraining, cli_option)
        halvings = 2 ** (len(self.block_out_channels) - 1)  # one per down block but the last
        if self.resolution % halvings:
            raise ConfigError(f"--resolution {self.resolution}: the UNet halves the image "
                              f"{len(self.block_out_channels) - 1} times, so the side must be a "
                              f"multiple of {halvings}")


class _Grey(Dataset):
    def __init__(self, tree: ImageTree, cfg: GeneratorTraining):
        self.tree = tree
        self.transform = v2.Compose([
            v2.PILToTensor(), v2.Resize(cfg.resolution, antialias=True),
            v2.CenterCrop(cfg.resolution), v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])
        self.channels = cfg.channels

    def __len__(self) -> int:
        return len(self.tree)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = load_rgb(self.tree.path(i))
        return self.transform(image.convert("L") if self.channels == 1 else image)


def build_unet(cfg: GeneratorTraining):
    from diffusers import UNet2DModel

    depth = len(cfg.block_out_channels)
    groups = min(32, math.gcd(*cfg.block_out_channels))
    return UNet2DModel(norm_num_groups=groups,
        sample_size=cfg.resolution, in_channels=cfg.channels, out_channels=cfg.channels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * (depth - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (depth - 1))


def _identity(data: str | Path, settings: dict) -> dict:
    """What makes a trained generator what it is: the data and the settings that change the
    weights (as JSON reads them back: lists, not tuples)."""
    return {"data": str(Path(data).resolve()),
            **json.loads(json.dumps(identity(settings, not_producing(GeneratorTraining))))}


def previous_training(out: str | Path, data: str | Path, cfg: GeneratorTraining) -> dict | None:
    """The record of the generator already in `out` when it is this very training (a re-run has
    nothing to do); None when `out` holds no trained weights. Weights trained otherwise, or that
    no readable record describes (a training stopped while saving, weights from elsewhere), are
    never replaced: refused, saying what differs."""
    out = Path(out)
    if not ((out / "model_index.json").is_file() or (out / "unet").is_dir()):
        return None
    fix = f"Use another --out, or delete {out} to train it anew"
    try:
        saved = json.loads((out / TRAINING_RECORD).read_text())
        before = _identity(saved["data"], saved["settings"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{out} holds a generator's weights but no readable {TRAINING_RECORD} "
                          "saying how they were made (a training stopped while saving, or "
                          f"weights from elsewhere): training would replace them. {fix}") from None
    now = _identity(data, asdict(cfg))
    changed = differences(before, now)
    if changed:
        details = "; ".join(f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in changed)
        raise ConfigError(f"{out} holds a generator trained with other settings ({details}): "
                          f"training would replace its weights. {fix}")
    return saved


def train_generator(data: str | Path, out: str | Path, cfg: GeneratorTraining = GeneratorTraining(),
                    show_progress: bool = True) -> dict:
    """Train a DDPM on the images under `data`; save a `DDPMPipeline` folder (safetensors, fp16)
    to `out` with `training.json` beside it. Returns that record. An `out` that already holds
    this training is left as it is (its record is returned); one that holds another is refused
    (`previous_training`)."""
    cfg.check()
    previous = previous_training(out, data, cfg)
    if previous is not None:
        return previous
    with quiet_libraries():
        try:
            return _train(data, Path(out), cfg, show_progress)
        except Exception as exc:  # a loader worker re-raises an image's error as a RuntimeError
            unreadable = UnreadableImageError.from_failure(exc)
            if unreadable is None:
                raise
            raise UnreadableImageError(unreadable.path, f"{unreadable.reason} (found while "
                                       f"training; `mixdiff data verify --real {data}` decodes "
                                       "every image to find the others)") from None


def _train(data: str | Path, out: Path, cfg: GeneratorTraining, show_progress: bool) -> dict:
    from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
    from rich.console import Console
    from rich.progress import Progress

    torch.manual_seed(cfg.seed)
    tree = ImageTree.scan(data)
    # full batches only, unless the tree is smaller than one batch: then every step is the whole
    # tree (drop_last there would yield no batch at all, and the step loop would never end)
    loader = DataLoader(_Grey(tree, cfg), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=len(tree) >= cfg.batch_size, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet = build_unet(cfg).to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=cfg.train_timesteps)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, cfg.steps))
    ema = torch.optim.swa_utils.AveragedModel(
        unet, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.999))
    start, step, losses = time.perf_counter(), 0, []
    console = Console(stderr=True)
    with Progress(console=console, transient=True,
                  disable=not (show_progress and console.is_terminal)) as progress:
        task = progress.add_task("training the DDPM", total=cfg.steps)
        while step < cfg.steps:
            for x0 in loader:
                x0 = x0.to(device)
                noise = torch.randn_like(x0)
                t = torch.randint(0, cfg.train_timesteps, (x0.shape[0],), device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    predicted = unet(scheduler.add_noise(x0, noise, t), t).sample
                loss = F.mse_loss(predicted.float(), noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
                optimizer.step()
                lr_schedule.step()
                ema.update_parameters(unet)
                losses.append(loss.item())
                step += 1
                progress.update(task, advance=1, description=f"DDPM loss {loss.item():.4f}")
                if step == cfg.steps:
                    break
    record = {"data": str(Path(data).resolve()), "images": len(tree), "settings": asdict(cfg),
              "seconds": round(time.perf_counter() - start, 1),
              "final_loss_mean_last_200": round(sum(losses[-200:]) / len(losses[-200:]), 5),
              "loss_first_200": round(sum(losses[:200]) / len(losses[:200]), 5),
              "device": device.type, "torch": torch.__version__}
    # shipped with DDIM (same noise schedule): deterministic SDEdit in a few dozen steps
    save_model(DDPMPipeline(unet=ema.module.cpu().to(torch.float16),
                            scheduler=DDIMScheduler.from_config(scheduler.config)), record, out)
    return record


def save_model(pipeline, record: dict, out: Path) -> None:
    """The pipeline's folders and files, then its record, written into a hidden folder inside
    `out` and only then moved into place, the record last: a full disk or a stop while saving
    leaves `out` as it was, never a half-written model that a re-run would take for trained
    weights (a folder whose weights have no record was not finished, and is not replaced). A
    full disk is one line naming `out`."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".saving.", suffix=".tmp"))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        atomic_write_text(staging / TRAINING_RECORD, json.dumps(record, indent=2) + "\n")
        for entry in sorted(staging.iterdir(), key=lambda entry: entry.name == TRAINING_RECORD):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():  # a part of an unfinished save
                shutil.rmtree(target)
            os.replace(entry, target)
    except BaseException as exc:
        full = no_space(exc)  # safetensors says so in its own words (SafetensorError)
        if full is not None:
            raise OSError(full.errno, os.strerror(full.errno), str(out)) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
