"""Images/s of `mixdiff generate` against a loop written like the authors' script, in one run.

Both loops drive the same SD-image-variations pipeline object (same weights, dtype, steps,
guidance, resolution and PNDM scheduler) over the same real images:
  * authors: one torch.Generator stream consumed in file order, batch 16, synchronous PIL saving;
  * ours:    `mixdiff.generate.runner.generate` (per-image seeds, reading and encoding/writing on
             threads, atomic renames, manifest), at --batch-size.
On the CPU the pipeline is tiny (built from configs); `--full-size` builds the real architecture
(UNet 860M, CLIP ViT-L/14, SD VAE) from its configuration with random weights: the same FLOPs as
lambdalabs/sd-image-variations-diffusers, no download. On a GPU the UNet's share of the card's
bf16/fp16 peak is reported too (FLOPs counted with torch.utils.flop_counter).

  python benchmarks/generate_throughput.py                       # CPU, tiny
  python benchmarks/generate_throughput.py --full-size --images 96 --batch-size 32   # GPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mixdiff.data.tree import ImageTree, load_rgb, twin_key
from mixdiff.generate.backends import SDImageVariations, sd_variation_preprocess
from mixdiff.generate.runner import generate
from mixdiff.generate.settings import GenerateSettings
from photo_tree import make_photo_tree

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16/fp16, spec sheets


def build_pipeline(full_size: bool, device: str, dtype: torch.dtype):
    from diffusers import (AutoencoderKL, PNDMScheduler, StableDiffusionImageVariationPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    if full_size:  # the configs of lambdalabs/sd-image-variations-diffusers
        unet = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
        vae = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                   down_block_types=["DownEncoderBlock2D"] * 4,
                   up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512)
        clip = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, patch_size=14, image_size=224,
                                projection_dim=768, hidden_act="quick_gelu")
    else:
        unet = dict(sample_size=16, cross_attention_dim=32, block_out_channels=(32, 64),
                    layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        vae = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                   up_block_types=["UpDecoderBlock2D"] * 2)
        clip = CLIPVisionConfig(hidden_size=32, projection_dim=32, intermediate_size=37,
                                num_attention_heads=4, num_hidden_layers=2, image_size=32,
                                patch_size=4)
    torch.manual_seed(0)
    with torch.device(device):  # random init where the model runs: seconds, not minutes
        pipe = StableDiffusionImageVariationPipeline(
            unet=UNet2DConditionModel(in_channels=4, out_channels=4, **unet),
            vae=AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **vae),
            image_encoder=CLIPVisionModelWithProjection(clip).eval(),
            feature_extractor=CLIPImageProcessor(), scheduler=PNDMScheduler(skip_prk_steps=True),
            safety_checker=None, requires_safety_checker=False)
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Prebuilt(SDImageVariations):
    """Our backend around an already-built pipeline (instead of from_pretrained)."""

    def __init__(self, settings: GenerateSettings, pipe):
        self._pipe = pipe
        super().__init__(settings)

    def load(self):
        return self._pipe


def authors_loop(pipe, real: Path, out: Path, resolution: int, steps: int, guidance: float,
                 device: str, batch_size: int = 16, seed: int = 0) -> int:
    """Their script's shape: one generator for the whole run, batches in file order, the
    model card's preprocessing, then each image saved with PIL before the next batch."""
    tree = ImageTree.scan(real)
    generator = torch.Generator(device).manual_seed(seed)
    size = pipe.image_encoder.config.image_size
    count = 0
    for start in range(0, len(tree), batch_size):
        paths = tree.relpaths[start:start + batch_size]
        pixels = sd_variation_preprocess([load_rgb(real / p) for p in paths], size)
        images = pipe(pixels.to(device, pipe.dtype), height=resolution, width=resolution,
                      num_inference_steps=steps, guidance_scale=guidance,
                      generator=generator).images
        for rel, image in zip(paths, images):
            target = out / f"{twin_key(rel)}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target)
            count += 1
    return count


def unet_tflops_per_image(pipe, resolution: int, steps: int, guidance: float, device: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    latent = resolution // pipe.vae_scale_factor
    unet = pipe.unet
    sample = torch.randn(1, 4, latent, latent, device=device, dtype=pipe.dtype)
    context = torch.randn(1, 1, unet.config.cross_attention_dim, device=device, dtype=pipe.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(sample, torch.tensor([10], device=device), context)
    passes = steps * (2 if guidance > 1 else 1)  # classifier-free guidance doubles the batch
    return counter.get_total_flops() * passes / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: 50 full-size, 4 tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default: 512 / 32")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32, help="ours (the authors' is 16)")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None)
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    steps = args.steps or (50 if args.full_size else 4)
    resolution = args.resolution or (512 if args.full_size else 32)
    dtype_name = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    pipe = build_pipeline(args.full_size, args.device, dtype)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photo_tree(tmp / "real", args.images, 384)
        make_photo_tree(tmp / "warm", 2, 384)
        authors_loop(pipe, tmp / "warm", tmp / "warm-out", resolution, 2, args.guidance,
                     args.device, batch_size=2)  # kernels, allocator, cuDNN choices
        sync()
        start = time.perf_counter()
        n = authors_loop(pipe, tmp / "real", tmp / "authors", resolution, steps, args.guidance,
                         args.device)
        sync()
        results["authors (batch 16, sync save)"] = n / (time.perf_counter() - start)
        variants = [("ours", False)] + ([("ours + torch.compile", True)] if args.compile else [])
        for name, compiled in variants:
            settings = GenerateSettings(
                steps=steps, guidance=args.guidance, resolution=resolution, scheduler="pndm",
                batch_size=args.batch_size, dtype=dtype_name, device=args.device,
                compile=compiled).resolved()
            backend = Prebuilt(settings, pipe)
            if compiled:  # compile outside the timing: one batch of the same shape
                generate(tmp / "real", tmp / f"warm-{name}", settings, limit=args.batch_size,
                         show_progress=False, backend=backend)
            sync()
            start = time.perf_counter()
            summary = generate(tmp / "real", tmp / name.replace(" ", ""), settings,
                               show_progress=False, backend=backend)
            sync()
            results[f"{name} (batch {args.batch_size})"] = summary.written / (
                time.perf_counter() - start)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"SD image variations {'full-size' if args.full_size else 'tiny'}, {resolution}px, "
          f"{steps} steps, guidance {args.guidance}, {dtype_name}, {args.images} images on {device}")
    baseline = next(iter(results.values()))
    for name, rate in results.items():
        print(f"  {name:<36}{rate:>9.3f} img/s  x{rate / baseline:.2f}")
    record = {"device": device, "resolution": resolution, "steps": steps, "dtype": dtype_name,
              "images": args.images, "img_per_s": results}
    if args.device.startswith("cuda"):
        tflops = unet_tflops_per_image(pipe, resolution, steps, args.guidance, args.device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
        best = max(results.values())
        achieved = tflops * best
        share = f", {achieved / peak:.1%} of the {peak:.0f} TFLOP/s dense peak" if peak else ""
        print(f"  UNet: {tflops:.1f} TFLOP per image; at {best:.2f} img/s that is "
              f"{achieved:.0f} TFLOP/s{share}")
        record.update(unet_tflop_per_image=tflops, unet_tflops_achieved=achieved, peak=peak)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
