"""Training throughput: does the input pipeline keep up with the training step?

For every combination of --backends x --decodes x --input-streams x --modes x --recipes x
--backbones (device decoding and the input stream only with the batched backend), in samples per
second (a sample: one real image with all its views, a pair for the two-view recipes):
  * end2end  the training DataLoader (workers decode and crop, and with `per_image` augment too;
             with `data.decode=device` they only read files and draw crops) feeding the transfer
             hooks (`batched`: the copy, the decode and crops with `device`, and the photometric
             ops, on a CUDA stream beside the step unless --input-streams off) and the training
             step, as in training; timed over --steps batches in steady state, after the
             workers' first round (one batch per worker, also the model's warm-up) is consumed;
  * step     the training step alone (`training_step` as a Trainer calls it, with its finite-loss
             check and the online probe, then backward and AdamW; bf16 autocast where bf16 is
             native, else fp32; channels_last for ResNets) on one fixed, finished batch on the
             device: the ceiling (the same model for every pipeline: measured once per round);
  * ratio    end2end / step: 1.0 means the input pipeline costs the step nothing;
  * device   the batched backend's transfer hooks alone (decode and crop with `device`
             decoding, the copy to the device, draw + ops + normalise), in views/s.
--repeats R measures every combination R times, interleaved (each round visits all of them), and
reports medians: on a shared machine both backends see the same noise. The image tree is cut from
scikit-image's photos: real images as JPEG, twins as --synthetic-format (`mixdiff generate`'s
default, JPEG q95), at the sizes given. DINO's teacher EMA (an optimiser hook) is not run.

  python benchmarks/train_step.py                                 # CPU: 32 px, ResNet-18 small stem
  python benchmarks/train_step.py --device cuda --image-size 224 --real-size 375 \\
      --synthetic-size 512 --backbones resnet50 --recipes asymmetric simclr --small-stem false \\
      --workers 15 --steps 100                                    # see benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import statistics
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mixdiff.pretrain.input.datamodule import MixDiffDataModule
from mixdiff.pretrain.methods import METHODS
from mixdiff.pretrain.train import native_bf16
from photo_tree import benchmark_config, make_real_and_twins
from timing import device_name, sync

class Bench:
    """One combination: its data module, model and optimiser, and the three measurements."""

    def __init__(self, args, root: Path, backend: str, decode: str, stream: str, mode: str,
                 recipe: str, backbone: str):
        self.args, self.device = args, torch.device(args.device)
        cfg = benchmark_config(
            root, backend, decode, mode, recipe, args.image_size,
            f"data.num_workers={args.workers}", f"model.backbone={backbone}",
            f"model.small_stem={args.small_stem}",
            f"augment.local_crops_real={args.local_crops - 2}", "augment.local_crops_synthetic=2",
            f"trainer.batch_size={args.batch_size}")
        self.dm = MixDiffDataModule(cfg)
        self.dm.setup()
        self.dm.input_stream = stream == "on"
        batches = args.steps + args.workers + 3  # one epoch holds the whole measurement
        repeat = math.ceil(batches * args.batch_size / len(self.dm.train_set))
        self.dm.train_set.samples = self.dm.train_set.samples * repeat
        torch.manual_seed(0)
        self.model = METHODS[cfg.method](OmegaConf.to_container(cfg), self.dm.num_classes)
        self.model = self.model.to(self.device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) \
            if args.precision == "bf16" else nullcontext()

    def finish(self, batch):
        """What Lightning does between the loader and the step: the transfer hooks."""
        return self.dm.prepare_batch(batch, self.device)

    def train_step(self, batch) -> None:
        """The training step as a Trainer runs it (with its finite-loss check, which waits for
        the forward pass, and the online probe), then backward and AdamW."""
        with self.autocast:
            loss = self.model.training_step(batch, 0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _rate(self, batches, count: int, samples: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        for _ in range(count):
            self.train_step(next(batches))
        sync(self.device)
        return count * samples / (time.perf_counter() - start)

    def measure(self, step: float | None = None) -> dict[str, float]:
        """end2end, then (unless given) step, then the transfer hooks alone."""
        a, b = self.args, self.args.batch_size
        loader = self.dm.train_dataloader()
        raw = iter(loader)
        finished = (self.finish(batch) for batch in raw)
        for _ in range(max(1, a.workers) + 2):  # the workers' first round; the model warms up
            self.train_step(next(finished))
        end2end = self._rate(finished, a.steps, b)
        kept = next(raw)
        del finished, raw, loader  # stop the workers before timing the device alone
        gc.collect()
        if step is None:
            step = self._rate(itertools.repeat(self.finish(kept)), a.step_steps, b)
        hooks = 0.0
        if self.dm.batch_augment is not None:
            views = len(self.dm.train_set.views) * b * a.step_steps
            sync(self.device)
            start = time.perf_counter()
            for _ in range(a.step_steps):
                self.finish(kept)
            sync(self.device)
            hooks = views / (time.perf_counter() - start)
        return {"end2end": end2end, "step": step, "ratio": end2end / step,
                "device_views": hooks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["batched", "per_image"])
    parser.add_argument("--decodes", nargs="+", default=["cpu"],
                        help="data.decode values (device: with the batched backend only)")
    parser.add_argument("--input-streams", nargs="+", choices=("on", "off"), default=["on"],
                        help="the batched device half on a CUDA stream beside the step (on, as in "
                        "training) or on the step's own stream (off); no difference on a CPU")
    parser.add_argument("--modes", nargs="+", default=["real", "mixdiff"])
    parser.add_argument("--recipes", nargs="+", default=["simclr", "asymmetric"])
    parser.add_argument("--backbones", nargs="+", default=["resnet18"])
    parser.add_argument("--small-stem", default="true")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--local-crops", type=int, default=8, help="DINO: local crops (2 of "
                        "them synthetic), besides the 2 global ones")
    parser.add_argument("--real-size", type=int, default=32)
    parser.add_argument("--synthetic-size", type=int, default=64)
    parser.add_argument("--synthetic-format", default=".jpg", choices=(".jpg", ".png", ".webp"))
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="end2end batches timed")
    parser.add_argument("--step-steps", type=int, default=None,
                        help="steps timed for step and augment (default: --steps)")
    parser.add_argument("--allow-few-steps", action="store_true",
                        help="allow fewer than 100 timed batches (a slow CPU)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 autocast where bf16 is native, else fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args()
    if args.steps < 100 and not args.allow_few_steps:
        parser.error("--steps below 100 is not steady state on a GPU; add --allow-few-steps")
    args.step_steps = args.step_steps or args.steps
    # training_step logs through self.log, which outside a Trainer only warns
    warnings.filterwarnings("ignore", message=r"You are trying to `self\.log\(\)`")
    if args.precision == "auto":
        args.precision = "bf16" if native_bf16(args.device.startswith("cuda")) else "fp32"
    # (backend, decode, input stream, mode, recipe, backbone); per_image has no device half
    combos = [c for c in itertools.product(args.backends, args.decodes, args.input_streams,
                                           args.modes, args.recipes, args.backbones)
              if c[0] == "batched" or (c[1], c[2]) == ("cpu", args.input_streams[0])]
    runs: dict[tuple, list[dict]] = {combo: [] for combo in combos}
    device = device_name(torch.device(args.device))

    def medians() -> dict[tuple, dict[str, float]]:
        return {combo: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                for combo, rs in runs.items() if rs}

    def write_json() -> None:  # after every combination: a run cut short keeps what it measured
        if args.json:
            args.json.write_text(json.dumps({
                "device": device, "args": vars(args) | {"json": None},
                "results": [dict(zip(("backend", "decode", "input_stream", "mode", "recipe",
                                      "backbone"), c), median=m, repeats=runs[c])
                            | ({} if c[0] == "batched" else {"input_stream": None})
                            for c, m in medians().items()]},
                indent=2, default=str))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_real_and_twins(root, args.images, args.real_size, args.synthetic_size,
                            args.synthetic_format)
        for _ in range(args.repeats):
            steps: dict[tuple, float] = {}  # the step does not depend on the input pipeline
            for combo in combos:
                result = Bench(args, root, *combo).measure(steps.get(combo[3:]))
                steps[combo[3:]] = result["step"]
                runs[combo].append(result)
                print(combo, {k: round(v, 2) for k, v in result.items()}, flush=True)
                write_json()
    print(f"\n{args.image_size} px, batch {args.batch_size}, {args.precision}, {device}, "
          f"{args.workers} loader workers; real {args.real_size} px JPEG, twins "
          f"{args.synthetic_size} px {args.synthetic_format[1:].upper()}; medians of "
          f"{args.repeats} interleaved repeats; samples/s (device: views/s)")
    print(f"{'backend':<10}{'decode':<7}{'stream':<7}{'mode':<8}{'recipe':<11}{'backbone':<10}"
          f"{'end2end':>9}{'step':>9}{'e2e/step':>9}{'device':>9}")
    for (backend, decode, stream, mode, recipe, backbone), m in medians().items():
        stream = stream if backend == "batched" else "-"
        print(f"{backend:<10}{decode:<7}{stream:<7}{mode:<8}{recipe:<11}{backbone:<10}"
              f"{m['end2end']:>9.1f}{m['step']:>9.1f}{m['ratio']:>9.3f}"
              f"{m['device_views']:>9.0f}")

    def compare(numerator: tuple, denominator: tuple, label: str) -> None:
        if numerator in runs and denominator in runs:
            ratios = [a["end2end"] / b["end2end"]
                      for a, b in zip(runs[numerator], runs[denominator])]
            print(f"{label}: {statistics.median(ratios):.3f} (per repeat: "
                  f"{', '.join(f'{r:.3f}' for r in ratios)})")

    first = args.input_streams[0]  # per_image was measured under this label
    for decode, stream, recipe, backbone in itertools.product(
            args.decodes, args.input_streams, args.recipes, args.backbones):
        for mode in args.modes:
            compare(("batched", decode, stream, mode, recipe, backbone),
                    ("per_image", "cpu", first, mode, recipe, backbone),
                    f"batched ({decode} decode, stream {stream}) / per_image end2end, {mode} "
                    f"{recipe} {backbone}")
            if stream == "on":
                compare(("batched", decode, "on", mode, recipe, backbone),
                        ("batched", decode, "off", mode, recipe, backbone),
                        f"input stream on / off end2end, {decode} decode, {mode} {recipe} "
                        f"{backbone}")
        compare(("batched", decode, stream, "mixdiff", recipe, backbone),
                ("batched", decode, stream, "real", recipe, backbone),
                f"mixdiff / real end2end, batched {decode} decode, stream {stream}, {recipe} "
                f"{backbone}")

if __name__ == "__main__":
    main()
