"""Throughput of MixDiff pre-training against plain SSL, measured in one run.

For `data.mode=real` and `data.mode=mixdiff` with the same backbone, recipe and batch:
  * loader   samples/s of the training DataLoader alone (decode + augment + collate),
  * step     samples/s of a training step alone (forward, backward, optimiser) on a fixed batch,
  * end2end  samples/s of the loader feeding the step, as in training.
A sample is one pair of views. The image tree is made from scikit-image's photos: real images as
JPEG, twins as PNG (what `mixdiff generate` writes by default), at sizes you choose.

  python benchmarks/train_step.py                         # 32 px, ResNet-18 small stem, bf16, CPU
  python benchmarks/train_step.py --image-size 224 --real-size 375 --synthetic-size 512 \
      --backbone resnet50 --batch-size 128 --device cuda --workers 12
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mixdiff.config import load_config
from mixdiff.data.datamodule import MixDiffDataModule
from mixdiff.methods import METHODS
from photo_tree import make_photo_tree


def cycle(loader, batches: int):
    """`batches` batches from the loader, starting new epochs as needed."""
    produced = 0
    while True:
        for batch in loader:
            if produced == batches:
                return
            produced += 1
            yield batch


def loader_rate(loader, batches: int) -> float:
    iterator = cycle(loader, batches + 1)
    next(iterator)  # start the workers
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += len(next(iterator)[0])
    return seen / (time.perf_counter() - start)


def train_rate(model, optimizer, batches, device, precision: str) -> float:
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" \
        else nullcontext()
    start, seen = None, 0
    for i, (index, views, _, _) in enumerate(batches):
        if i == 1:  # the first step warms up kernels and allocators
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        views = [v.to(device, non_blocking=True) for v in views]
        index = index.to(device)
        with autocast:
            loss = model.ssl_loss(views, model.encode_views(views), index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def measure(mode: str, root: Path, args) -> dict[str, float]:
    cfg = load_config(None, [
        f"method={args.method}", f"data.real={root / 'real'}", f"data.synthetic=[{root / 'syn'}]",
        f"data.mode={mode}", f"data.image_size={args.image_size}", f"data.num_workers={args.workers}",
        f"model.backbone={args.backbone}", f"model.small_stem={args.small_stem}",
        f"augment.recipe={args.recipe}", f"trainer.batch_size={args.batch_size}",
        "data.val_fraction=0.0"])
    dm = MixDiffDataModule(cfg)
    dm.setup()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = METHODS[cfg.method](OmegaConf.to_container(cfg), dm.num_classes).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = dm.train_dataloader()
    fixed = next(iter(loader))
    return {
        "loader": loader_rate(loader, args.steps),
        "step": train_rate(model, optimizer, [fixed] * (args.steps + 1), device, args.precision),
        "end2end": train_rate(model, optimizer, cycle(loader, args.steps + 1), device,
                              args.precision),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--recipe", default="simclr")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--small-stem", default="true")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--real-size", type=int, default=32)
    parser.add_argument("--synthetic-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_photo_tree(root / "real", args.images, args.real_size, ".jpg", seed=0)
        make_photo_tree(root / "syn", args.images, args.synthetic_size, ".png", seed=1)
        results = {mode: measure(mode, root, args) for mode in ("real", "mixdiff")}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.method} {args.backbone} {args.image_size}px batch {args.batch_size} "
          f"{args.precision} on {device}; real {args.real_size}px jpg, synthetic "
          f"{args.synthetic_size}px png; {args.workers} loader workers")
    print(f"{'samples/s':<10}{'real':>10}{'mixdiff':>10}{'mixdiff/real':>14}")
    for key in ("loader", "step", "end2end"):
        r, m = results["real"][key], results["mixdiff"][key]
        print(f"{key:<10}{r:>10.1f}{m:>10.1f}{m / r:>14.3f}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "args": vars(args) | {"json": None},
                                         "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
