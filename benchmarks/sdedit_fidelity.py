"""How faithful are the embedded generator's SDEdit twins, by strength? (Chooses the quickstart's.)

For each strength: generate one twin of each training image of a Fashion-MNIST subset, then
`data verify --fidelity`: the share of twins that the linear probe of a real-only run (pre-trained
with the quickstart's settings, or --run) assigns to their real image's class, and the mean pixel
difference. Prints a table and writes JSON.

  python benchmarks/sdedit_fidelity.py --out /tmp/fidelity --per-class 100 --strengths 0.3,0.5,0.7
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from mixdiff.config import load_config
from mixdiff.data import fashion_mnist
from mixdiff.evaluate.features import Encoder, labelled_sets
from mixdiff.evaluate.fidelity import fidelity
from mixdiff.evaluate.linear import linear_eval
from mixdiff.generate.runner import generate
from mixdiff.generate.settings import GenerateSettings
from mixdiff.quickstart import DATASET, PRESETS, Paths, preset_config, run_overrides
from mixdiff.pretrain.train import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=None, help="of the real-only run")
    parser.add_argument("--strengths", default="0.3,0.5,0.7")
    parser.add_argument("--run", type=Path, help="a real-only run with a linear probe of the "
                        "same classes (default: train one)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = replace(PRESETS["default"], per_class=args.per_class,
                       epochs=args.epochs or PRESETS["default"].epochs)
    paths = Paths(args.out)
    fashion_mnist.prepare(paths.data, per_class=settings.per_class)
    run = args.run
    if run is None:  # a classifier that never saw a twin
        run = args.out / "real-only"
        overrides = run_overrides(settings, paths, "simclr", "real", settings.seed)
        pretrain(load_config(preset_config("simclr"), overrides), run)
        train, test = labelled_sets(paths.train, paths.test, DATASET)
        linear_eval(Encoder.from_run(run, device="cpu"), train, test)
    rows = []
    for strength in (float(s) for s in args.strengths.split(",")):
        root = args.out / f"sdedit-{strength}"
        start = time.perf_counter()
        summary = generate(paths.train, root, GenerateSettings(generator="sdedit",
                                                               strength=strength,
                                                               batch_size=100))
        seconds = time.perf_counter() - start
        result = fidelity(paths.train, root / "v0", run, DATASET, device="cpu")
        rows.append({"strength": strength, "images_per_second": summary.images_per_second,
                     "seconds": round(seconds, 1), **result})
    print(f"SDEdit with the embedded DDPM on {paths.train} ({rows[0]['twins']} images); "
          f"classifier: linear probe of {run}")
    print(f"{'strength':>9}{'class kept':>12}{'probe on real':>15}{'pixel diff':>12}"
          f"{'img/s':>8}  least kept")
    for r in rows:
        worst = sorted(r["class_agreement_per_class"].items(), key=lambda kv: kv[1])[:2]
        print(f"{r['strength']:>9.2f}{r['class_agreement']:>12.1%}{r['real_accuracy']:>15.1%}"
              f"{r['mean_abs_pixel_difference']:>12.3f}{r['images_per_second']:>8.1f}  "
              + ", ".join(f"{c} {v:.0%}" for c, v in worst))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
