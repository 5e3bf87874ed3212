"""What one loader worker costs per training sample, on one CPU core, for each augmentation
backend and place of decoding: the figure that says how many pairs/s a machine's cores can feed.

A loader worker runs `PairedDataset.__getitem__` and the collate for every sample; this times both
in one process with one thread (what a worker has), after a warm-up, for every combination of
--backends x --decodes x --modes x --recipes. From the per-sample time it prints what W workers
deliver (W x one core's rate: workers do not share anything) and that rate over --step-rate, the
training step's own rate: below 1.0 the workers cannot keep up with the step. 1.0 or more is
necessary, not sufficient: not counted here are passing batches between processes and, with
`data.decode=device`, the decoding and cutting the main process and the device then do, which
`benchmarks/train_step.py` measures end to end.

The default --step-rate is the issue's measurement of a ResNet-50 bf16 channels_last step at
224 px on an H200 (2,370 pairs/s); on a GPU machine `benchmarks/train_step.py` measures both ends.

  python benchmarks/worker_cost.py                                 # 224 px, ImageNet-sized photos
  python benchmarks/worker_cost.py --synthetic-format .png         # twins as PNG
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

from mixdiff.pretrain.input import device_decode
from mixdiff.pretrain.input.datamodule import MixDiffDataModule
from photo_tree import benchmark_config, make_real_and_twins

def worker_seconds(dm: MixDiffDataModule, samples: int, batch: int) -> float:
    """Seconds per sample for __getitem__ plus the collate, as one worker runs them."""
    dataset = dm.train_set
    collate = device_decode.collate if dm.cfg.data.decode == "device" else default_collate
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    for i in order[:batch]:  # warm-up: file cache, allocator, lazy imports
        dataset[i]
    start = time.perf_counter()
    for first in range(0, samples, batch):
        collate([dataset[order[(first + j) % len(order)]] for j in range(batch)])
    return (time.perf_counter() - start) / (-(-samples // batch) * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["per_image", "batched"])
    parser.add_argument("--decodes", nargs="+", default=["cpu", "device"])
    parser.add_argument("--modes", nargs="+", default=["real", "mixdiff"])
    parser.add_argument("--recipes", nargs="+", default=["asymmetric", "dino"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--real-size", type=int, default=433,
                        help="side of the square real JPEGs (433: the area of 500 x 375)")
    parser.add_argument("--synthetic-size", type=int, default=512)
    parser.add_argument("--synthetic-format", default=".jpg", choices=(".jpg", ".png", ".webp"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--samples", type=int, default=256, help="samples timed per combination")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=15, help="workers of the machine to predict")
    parser.add_argument("--step-rate", type=float, default=2370.0,
                        help="the training step's samples/s to compare the workers with")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker's share
    combos = [c for c in itertools.product(args.backends, args.decodes, args.modes, args.recipes)
              if not (c[0] == "per_image" and c[1] == "device")]  # device decoding is batched
    runs: dict[tuple, list[float]] = {c: [] for c in combos}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_real_and_twins(root, args.images, args.real_size, args.synthetic_size,
                            args.synthetic_format)
        modules = {}
        for backend, decode, mode, recipe in combos:
            cfg = benchmark_config(root, backend, decode, mode, recipe, args.image_size)
            modules[backend, decode, mode, recipe] = dm = MixDiffDataModule(cfg)
            dm.setup()
        for _ in range(args.repeats):  # interleaved: every combination sees the same noise
            for combo in combos:
                runs[combo].append(worker_seconds(modules[combo], args.samples, args.batch_size))
    medians = {c: statistics.median(r) for c, r in runs.items()}
    print(f"\none loader worker (1 thread), {args.image_size} px; real {args.real_size} px JPEG, "
          f"twins {args.synthetic_size} px {args.synthetic_format[1:].upper()}; medians of "
          f"{args.repeats}; {args.workers} workers against a step of {args.step_rate:.0f}/s")
    print(f"{'backend':<10}{'decode':<8}{'mode':<9}{'recipe':<11}{'ms/sample':>10}"
          f"{'1 worker/s':>11}{f'{args.workers} workers/s':>14}{'/ step':>8}")
    for (backend, decode, mode, recipe), seconds in medians.items():
        rate = 1 / seconds
        print(f"{backend:<10}{decode:<8}{mode:<9}{recipe:<11}{seconds * 1e3:>10.2f}{rate:>11.1f}"
              f"{rate * args.workers:>14.0f}{rate * args.workers / args.step_rate:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "args": vars(args) | {"json": None}, "cpu_threads": 1,
            "results": [{"backend": c[0], "decode": c[1], "mode": c[2], "recipe": c[3],
                         "seconds_per_sample": medians[c], "repeats": runs[c]} for c in combos]},
            indent=2, default=str))


if __name__ == "__main__":
    main()
