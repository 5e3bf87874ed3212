"""Where the batched backend's device half spends its time, stage by stage, on one batch.

The stages as `MixDiffDataModule.transfer_batch_to_device` runs them: with `data.decode=device`
the batched JPEG decode and the crops (`device_decode.decode_images`, `cut_views`), with `cpu` the
copy of the workers' uint8 crops to the device; the parameter draw (on the CPU, and its copy to the device); then per group of
same-size views (`BatchAugment.apply`): the conversion to float, each photometric op on the rows
it applies to (`GroupPlan.ops`) and the normalisation. Each stage is timed with the device
synchronised before and after it (so stages do not overlap, unlike in training), summed over
--repeats batches after one warm-up: ms per batch and each stage's share. `train_step.py` gives the
same half's rate in one piece ("device"); this says which part to make faster.

  python benchmarks/device_half.py                                    # CPU, 224 px
  python benchmarks/device_half.py --device cuda --batch-size 128     # see gpu_check.sh
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from mixdiff.pretrain.input import device_decode
from mixdiff.pretrain.input.datamodule import MixDiffDataModule
from photo_tree import benchmark_config, make_real_and_twins
from timing import device_name, sync


def breakdown(dm: MixDiffDataModule, decode: str, device: torch.device, repeats: int
              ) -> dict[str, float]:
    """Seconds per stage, summed over `repeats` batches (after a warm-up one)."""
    batch = next(iter(dm.train_dataloader()))
    augment, sizes = dm.batch_augment, [view.size for view in dm.train_set.views]
    total: dict[str, float] = defaultdict(float)

    def stage(name: str, work, seconds: dict[str, float]):
        sync(device)
        start = time.perf_counter()
        result = work()
        sync(device)
        seconds[name] += time.perf_counter() - start
        return result

    for repeat in range(repeats + 1):
        seconds = total if repeat else defaultdict(float)
        _, views, sources, _ = batch
        if decode == "device":
            decoded = stage("decode", lambda: device_decode.decode_images(views, device), seconds)
            views = stage("crop", lambda: device_decode.cut_views(decoded, views.crops, sizes),
                          seconds)
        else:
            views = stage("copy", lambda: [v.to(device, non_blocking=True) for v in views],
                          seconds)
        generator = torch.Generator().manual_seed(repeat)
        plans = stage("draw", lambda: augment.plan(sources, generator), seconds)
        for plan in plans:  # as BatchAugment.apply, one stage at a time
            images = stage("to float", lambda: F.to_dtype(
                torch.cat([views[v] for v in plan.views]), torch.float32, scale=True), seconds)
            plan = stage("draw", lambda: plan.to(device), seconds)
            for name, rows, op in plan.ops():
                stage(name, lambda: images.__setitem__(rows, op(images[rows])), seconds)
            stage("normalise", lambda: augment.normalise(images), seconds)
    return dict(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decodes", nargs="+", default=["cpu", "device"])
    parser.add_argument("--mode", default="mixdiff")
    parser.add_argument("--recipes", nargs="+", default=["asymmetric", "dino"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--real-size", type=int, default=433)
    parser.add_argument("--synthetic-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_real_and_twins(root, args.batch_size, args.real_size, args.synthetic_size, ".jpg")
        for decode in args.decodes:
            for recipe in args.recipes:
                cfg = benchmark_config(root, "batched", decode, args.mode, recipe,
                                       args.image_size, "data.num_workers=0",
                                       f"trainer.batch_size={args.batch_size}",
                                       "augment.local_crops_real=6",
                                       "augment.local_crops_synthetic=2")
                dm = MixDiffDataModule(cfg)
                dm.setup()
                seconds = breakdown(dm, decode, device, args.repeats)
                views = len(dm.train_set.views) * args.batch_size * args.repeats
                results.append({"decode": decode, "recipe": recipe, "views": views // args.repeats,
                                "ms_per_batch": {k: 1000 * v / args.repeats
                                                 for k, v in seconds.items()},
                                "views_per_s": views / sum(seconds.values())})
    name = device_name(device)
    print(f"\n{name}; {args.mode}, {args.image_size} px, batch {args.batch_size} "
          f"(real {args.real_size} px, twins {args.synthetic_size} px JPEG); ms per batch, "
          f"mean of {args.repeats}, each stage synchronised")
    for r in results:
        total = sum(r["ms_per_batch"].values())
        print(f"{r['decode']} decode, {r['recipe']} ({r['views']} views): {total:.1f} ms, "
              f"{r['views_per_s']:.0f} views/s")
        for stage, ms in sorted(r["ms_per_batch"].items(), key=lambda kv: -kv[1]):
            print(f"  {stage:<11}{ms:>9.2f} ms {ms / total:>6.1%}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "args": vars(args) | {"json": None},
                                         "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
