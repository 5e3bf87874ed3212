"""Speed of offline evaluation: feature extraction and the L-BFGS linear probe.

  * encode      images/s of the backbone alone on one fixed batch (inference mode; fp32, and
                bf16 autocast), the ceiling the loader has to feed;
  * loader+enc  images/s of `Encoder.encode` over a tree of JPEGs (decode in DataLoader workers,
                the run's eval transform, the backbone), cache disabled;
  * probe       seconds of the linear probe's weight-decay sweep + refit (`select_and_fit`) on
                synthetic features of the given size (class means + noise, ReLU'd like pooled
                ResNet features), with the iterations it took.

The run folder is written directly (config.yaml + a checkpoint holding `backbone.*` weights, the
two things `Encoder.from_run` reads), so no pre-training is needed.

  python benchmarks/eval_speed.py                                   # CPU: small sizes
  python benchmarks/eval_speed.py --device cuda --image-size 224 --images 2048 --batch-size 256 \
      --workers 12 --probe-n 126689                                 # GPU: ImageNet-100 probe
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
from mixdiff.evaluate.features import Encoder, ImageSet
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.logistic import LogisticSettings, select_and_fit, stratified_holdout
from mixdiff.models import build_backbone
from photo_tree import make_photo_tree
from timing import device_name, sync


def write_run(root: Path, backbone: str, image_size: int, tree: Path) -> Path:
    cfg = load_config(None, [f"data.real={tree}", f"model.backbone={backbone}",
                             f"data.image_size={image_size}"])
    root.mkdir(parents=True)
    OmegaConf.save(cfg, root / "config.yaml")
    net, _ = build_backbone(cfg.model, image_size)
    (root / "checkpoints").mkdir()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()},
                "epoch": 0, "global_step": 0}, root / "checkpoints" / "last.ckpt")
    return root


@torch.inference_mode()
def encode_rate(encoder: Encoder, batch_size: int, repeats: int, bf16: bool) -> float:
    device = encoder.device
    batch = torch.randn(batch_size, 3, encoder.config.data.image_size,
                        encoder.config.data.image_size, device=device)
    if encoder.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        encoder.backbone(batch)  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            encoder.backbone(batch)
        sync(device)
    return repeats * batch_size / (time.perf_counter() - start)


def loader_rate(encoder: Encoder, images: ImageSet, batch_size: int, workers: int) -> float:
    encoder._encode(images, None, EncodeOptions(batch_size, workers, False))  # warm-up, page cache
    sync(encoder.device)
    start = time.perf_counter()
    encoder._encode(images, None, EncodeOptions(batch_size, workers, False))
    sync(encoder.device)
    return len(images) / (time.perf_counter() - start)


def probe_time(n: int, dim: int, classes: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    centres = 0.15 * torch.randn(classes, dim, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    features = (centres[labels] + torch.randn(n, dim, generator=gen)).relu()
    settings = LogisticSettings()
    fit, held = stratified_holdout(labels.numpy(), settings.heldout_fraction, settings.seed)
    fitted = select_and_fit(features[fit], labels[fit], features[held], labels[held], features,
                            labels, classes, "top1", settings, device)
    return {"n": n, "dim": dim, "classes": classes, "seconds": round(fitted.seconds, 2),
            "grid_points": len(fitted.sweep.points),
            "sweep_iterations": sum(p.iterations for p in fitted.sweep.points),
            "final_iterations": fitted.final.iterations,
            "chosen_weight_decay": fitted.sweep.best_weight_decay}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbones", default="resnet18,resnet50")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--photo-size", type=int, default=160, help="side of the JPEGs on disk")
    parser.add_argument("--images", type=int, default=64, help="JPEGs for loader+encode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="batches timed for encode")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--probe-n", type=int, default=20000)
    parser.add_argument("--probe-dim", type=int, default=2048)
    parser.add_argument("--probe-classes", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("eval_speed.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    report = {"device": device_name(device),
              "args": vars(args) | {"out": str(args.out)}, "encode": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = make_photo_tree(Path(tmp) / "photos" / "val", args.images, args.photo_size)
        images = ImageSet.from_tree(tree)
        for backbone in args.backbones.split(","):
            run = write_run(Path(tmp) / backbone, backbone, args.image_size, tree)
            encoder = Encoder.from_run(run, device=args.device)
            row = {"backbone": backbone, "image_size": args.image_size,
                   "encode_fp32": encode_rate(encoder, args.batch_size, args.repeats, False),
                   "encode_bf16": encode_rate(encoder, args.batch_size, args.repeats, True),
                   "loader_encode": loader_rate(encoder, images, args.batch_size, args.workers)}
            report["encode"].append(row)
            if len(report["encode"]) == 1:
                print(f"images/s on {report['device']}, {args.workers} loader workers\n"
                      f"{'backbone':<10}{'size':>6}{'encode fp32':>13}{'encode bf16':>13}"
                      f"{'loader+encode':>15}")
            print(f"{backbone:<10}{args.image_size:>6}{row['encode_fp32']:>13.1f}"
                  f"{row['encode_bf16']:>13.1f}{row['loader_encode']:>15.1f}", flush=True)
    report["probe"] = probe_time(args.probe_n, args.probe_dim, args.probe_classes, device)
    probe = report["probe"]
    print(f"probe {probe['n']} x {probe['dim']}, {probe['classes']} classes: "
          f"{probe['seconds']} s ({probe['grid_points']} grid points, "
          f"{probe['sweep_iterations']} + {probe['final_iterations']} L-BFGS iterations, "
          f"weight decay {probe['chosen_weight_decay']:.2g})")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
