"""Where a quickstart epoch's time goes on this CPU: the quickstart's own SimCLR run (ResNet-18,
32 px, Fashion-MNIST) trained by `mixdiff pretrain` in a subprocess, once per variant, each
variant changing one thing against the quickstart's settings:

  * online_every   the online evaluation (the probe and kNN over the val and bank images) every
                   epoch, or never (the quickstart evaluates every 10 epochs);
  * workers        loader processes (they share the 2 cores with the training step);
  * threads        torch's intra-op threads of the training process (OMP_NUM_THREADS);
  * batch          trainer.batch_size.

Each variant runs --epochs epochs; the figure is the median of its epochs' `time/epoch_seconds`
after the first (which pays the workers' start and the first allocation), and samples/s. The
variants run interleaved, --repeats times, so that a busy machine slows them alike.

  python benchmarks/quickstart_epoch.py --out /tmp/qs-epoch          # about 10 minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from importlib import resources
from pathlib import Path

from mixdiff.quickstart import PRESETS

DEFAULT = PRESETS["default"]
# name -> (overrides, environment) against the quickstart's settings
VARIANTS: dict[str, tuple[dict, dict]] = {
    "quickstart (online eval every 10 epochs)": ({}, {}),
    "online eval every epoch": ({"online_eval.every_n_epochs": 1}, {}),
    "0 loader workers": ({"data.num_workers": 0}, {}),
    "1 torch thread": ({}, {"OMP_NUM_THREADS": "1"}),
    "batch 128": ({"trainer.batch_size": 128}, {}),
}


def run_variant(out: Path, data: Path, epochs: int, overrides: dict, env: dict) -> list[dict]:
    preset = resources.files("mixdiff").joinpath("configs/fashion_mnist/simclr.yaml")
    settings = {
        "data.real": data / "train", "data.val": data / "test", "data.image_size": 32,
        "data.real_fraction": DEFAULT.real_fraction,
        "model.small_stem": DEFAULT.small_stem, "data.num_workers": DEFAULT.workers,
        "trainer.batch_size": DEFAULT.batch_size, "optim.lr": DEFAULT.lr,
        "trainer.max_epochs": epochs, "trainer.accelerator": "cpu", "trainer.logger": "none",
        "trainer.progress_bar": False, "online_eval.knn_max_train_images": "null",
        "online_eval.every_n_epochs": DEFAULT.online_eval_every, **overrides}
    command = [sys.executable, "-m", "mixdiff.cli", "pretrain", "--config", str(preset),
               "--out", str(out), *(f"{k}={v}" for k, v in settings.items())]
    subprocess.run(command, check=True, env={**os.environ, **env}, capture_output=True)
    with open(out / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=DEFAULT.per_class)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from mixdiff.data import fashion_mnist

    data = args.out / "fashion-mnist"
    fashion_mnist.prepare(data, per_class=args.per_class, show_progress=False)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for number, (name, (overrides, env)) in enumerate(VARIANTS.items()):
            rows = run_variant(args.out / f"run-{repeat}-{number}", data, args.epochs, overrides,
                               env)
            seconds[name] += [float(r["time/epoch_seconds"]) for r in rows[1:]]
            rates[name] += [float(r["time/images_per_second"]) for r in rows[1:]]
    base = statistics.median(seconds[next(iter(VARIANTS))])
    table = {name: {"epoch_seconds": statistics.median(seconds[name]),
                    "samples_per_second": statistics.median(rates[name]),
                    "vs_quickstart": statistics.median(seconds[name]) / base}
             for name in VARIANTS}
    print(f"{'variant':<44} {'s/epoch':>8} {'samples/s':>10} {'time vs quickstart':>19}")
    for name, row in table.items():
        print(f"{name:<44} {row['epoch_seconds']:>8.1f} {row['samples_per_second']:>10.0f} "
              f"{row['vs_quickstart']:>19.2f}")
    record = {"per_class": args.per_class, "epochs": args.epochs, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "variants": table}
    (args.out / "quickstart_epoch.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
