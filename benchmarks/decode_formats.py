"""Which format should `mixdiff generate` write? Decode time, size and fidelity of a synthetic twin.

For each of scikit-image's sample photos, cut to a square and resized to --size (512: what the
Stable Diffusion generators write) and optionally stored at --save-size, it encodes PNG, JPEG and
WebP (at --quality) and measures, on one CPU thread:
  * decode  ms per image of what a loader worker does: `mixdiff.data.decode.load_rgb_for`
            (open, decode, convert to RGB), median of --repeats,
  * draft   the same with JPEG draft mode for a plain 224 px view (resize + centre crop), which
            lets a 512 px JPEG decode at half size (JPEG only; see mixdiff.data.decode for when
            random-resized crops allow it),
  * kB      bytes on disk,
  * PSNR    dB of the decoded image against the lossless (PNG) one.

  python benchmarks/decode_formats.py                       # 512 px, quality 95
  python benchmarks/decode_formats.py --save-size 256
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixdiff.data.decode import ViewNeed, load_rgb_for
from mixdiff.generate.settings import FORMATS

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")


def photos(size: int, save_size: int | None) -> dict[str, Image.Image]:
    """Each photo cut to a centred square, resized to `size`, then to `save_size` (as generated
    twins are: the generator's side, then the stored side)."""
    from skimage import data

    out = {}
    for name in PHOTOS:
        array = getattr(data, name)()
        side = min(array.shape[:2])
        y, x = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
        image = Image.fromarray(array[y:y + side, x:x + side]).convert("RGB")
        image = image.resize((size, size), Image.Resampling.BICUBIC)
        if save_size:
            image = image.resize((save_size, save_size), Image.Resampling.LANCZOS)
        out[name] = image
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def decode_ms(path: Path, repeats: int, needed) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_rgb_for(path, needed)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--save-size", type=int, default=None)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/decode_formats"))
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.dir.mkdir(parents=True, exist_ok=True)
    plain_view = ViewNeed(224, None)  # what draft mode must still serve
    table: dict[str, dict[str, list[float]]] = {fmt: {"decode": [], "draft": [], "kB": [],
                                                      "psnr": []} for fmt in FORMATS}
    for name, image in photos(args.size, args.save_size).items():
        reference = np.asarray(image)
        for fmt, pil_format in FORMATS.items():
            buffer = io.BytesIO()
            image.save(buffer, format=pil_format,
                       **({} if fmt == "png" else {"quality": args.quality}))
            path = args.dir / f"{name}.{fmt}"
            path.write_bytes(buffer.getvalue())
            row = table[fmt]
            row["decode"].append(decode_ms(path, args.repeats, None))
            row["draft"].append(decode_ms(path, args.repeats, [plain_view]))
            row["kB"].append(len(buffer.getvalue()) / 1000)
            row["psnr"].append(psnr(np.asarray(Image.open(path).convert("RGB")), reference))
    side = args.save_size or args.size
    print(f"{len(PHOTOS)} scikit-image photos at {side} px, quality {args.quality}, one thread "
          f"(median of {args.repeats} decodes; draft: for a plain {plain_view.size} px view)")
    print(f"{'format':<8}{'decode ms':>11}{'draft ms':>10}{'kB':>8}{'PSNR dB':>9}")
    summary = {}
    for fmt, row in table.items():
        summary[fmt] = {key: statistics.mean(values) for key, values in row.items()}
        s = summary[fmt]
        print(f"{fmt:<8}{s['decode']:>11.2f}{s['draft']:>10.2f}{s['kB']:>8.1f}"
              f"{s['psnr']:>9.1f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None, "dir": None},
                                         "photos": PHOTOS, "mean": summary, "per_photo": table},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
