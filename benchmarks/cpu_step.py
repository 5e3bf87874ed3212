"""The quickstart's training step on the CPU, before and after its two CPU changes: ResNet-18
(standard stem) at 32 px, channels_last, batch --batch images, forward + backward + AdamW step,
median of --steps steps after two warm-up steps, interleaved --repeats times.

  * plain convolutions or `mixdiff.models.one_window` (a one-pixel output from the kernel taps
    that touch the image: the last stage runs at 1x1 there);
  * AdamW single-tensor (PyTorch's CPU default) or fused.

  python benchmarks/cpu_step.py            # about a minute on the 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from omegaconf import OmegaConf

from mixdiff.models import build_backbone
from mixdiff.models.one_window import one_window_convs
from timing import device_name

VARIANTS = {"plain convs, AdamW single-tensor (before)": (False, False),
            "one-window convs, AdamW single-tensor": (True, False),
            "one-window convs, AdamW fused (now)": (True, True)}


def step_ms(one_window: bool, fused: bool, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    config = OmegaConf.create({"backbone": "resnet18", "small_stem": False, "patch_size": 16,
                               "drop_path_rate": 0.0})
    net = build_backbone(config, 32)[0].to(memory_format=torch.channels_last)
    if one_window:
        one_window_convs(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=fused or None)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        loss = net(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="images (64 pairs: 128)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    found: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, (one_window, fused) in VARIANTS.items():
            found[name].append(step_ms(one_window, fused, args.batch, args.steps))
    before = statistics.median(next(iter(found.values())))
    print(f"{device_name(torch.device('cpu'))}, batch {args.batch} images at 32 px")
    print(f"{'variant':<44} {'ms/step':>8} {'speed-up':>9}")
    table = {}
    for name, values in found.items():
        median = statistics.median(values)
        table[name] = {"ms_per_step": median, "speed_up": before / median, "repeats": values}
        print(f"{name:<44} {median:>8.0f} {before / median:>8.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"batch": args.batch, "device": device_name(torch.device("cpu")),
                       "variants": table}, handle, indent=2)


if __name__ == "__main__":
    main()
