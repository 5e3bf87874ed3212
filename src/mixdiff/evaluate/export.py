"""`mixdiff export`: a run's backbone as a plain state dict that torchvision or timm load without
MixDiff, plus a JSON beside it with the exact code that loads it and the preprocessing.

The state dict is the backbone the evaluation uses (`Encoder`): no classifier. So the documented
load replaces torchvision's 1000-way `fc` by `nn.Identity()` (timm: `num_classes=0`, which already
has none) and, for runs with the small CIFAR-style stem, swaps in the 3x3 `conv1` and drops the
max-pool, exactly as training built it. With those lines `load_state_dict` is strict and the model
gives the encoder's features bit for bit.

File format by the suffix of --out: `.safetensors` (recommended: loading runs no pickled code,
and it memory-maps) or `.pt` / `.pth` (`torch.save`; load with `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch
from torchvision.transforms import v2

import mixdiff
from mixdiff.errors import MixDiffError
from mixdiff.evaluate.features import Encoder
from mixdiff.io import atomic_open, atomic_write_text
from mixdiff.models.backbones import BACKBONES
from mixdiff.outputs import refuse_replacing

FILE_LOADERS = {  # --out suffix -> the line that reads it back
    ".safetensors": "from safetensors.torch import load_file\nstate = load_file({file!r})",
    ".pt": "state = torch.load({file!r}, map_location='cpu', weights_only=True)",
    ".pth": "state = torch.load({file!r}, map_location='cpu', weights_only=True)",
}
RECIPE_KEYS = {"format", "file", "architecture", "load", "source"}  # every recipe has these
SMALL_STEM = ("model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, "
              "bias=False)\nmodel.maxpool = torch.nn.Identity()")


def _timm_name(backbone: str) -> str:
    """The timm architecture of a backbone of the registry (ResNets have the same name)."""
    return BACKBONES[backbone].model_name


def _constructor(encoder: Encoder, fmt: str) -> str:
    """The lines that build the empty model the state dict loads into."""
    model, size = encoder.config.model, encoder.config.data.image_size
    resnet = model.backbone.startswith("resnet")
    if fmt == "torchvision":
        if not resnet:
            raise MixDiffError(f"--format torchvision: {model.backbone} is a timm ViT with no "
                               "torchvision twin; export it with --format timm")
        lines = ["import torch, torchvision", f"model = torchvision.models.{model.backbone}()",
                 "model.fc = torch.nn.Identity()  # a backbone: pooled features, no classifier"]
    else:
        extra = "" if resnet else (f", img_size={size}, patch_size={model.patch_size}, "
                                   "dynamic_img_size=True")
        lines = ["import torch, timm", f"model = timm.create_model({_timm_name(model.backbone)!r}"
                 f", pretrained=False, num_classes=0{extra})"]
    if resnet and model.small_stem:
        lines.append(SMALL_STEM + "  # the run's small stem for small images")
    return "\n".join(lines)


def _preprocessing(encoder: Encoder) -> dict:
    """Read off the run's evaluation transform itself (so the recipe cannot drift from it)."""
    steps = {type(step): step for step in encoder.transform.transforms}
    resize, crop, normalize = steps[v2.Resize], steps[v2.CenterCrop], steps[v2.Normalize]
    return {"resize_short_side": resize.size[0], "interpolation": str(resize.interpolation),
            "antialias": resize.antialias, "center_crop": crop.size[0],
            "mean": list(normalize.mean), "std": list(normalize.std),
            "torchvision": "v2.Compose([v2.Resize(resize_short_side, antialias=antialias), "
                           "v2.CenterCrop(center_crop), v2.ToDtype(torch.float32, scale=True), "
                           "v2.Normalize(mean, std)])"}


def _earlier_export(out: Path, recipe: Path) -> bool:
    """Whether `recipe` is the recipe an earlier export wrote beside `out`."""
    try:
        saved = json.loads(recipe.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and RECIPE_KEYS <= saved.keys() and saved["file"] == out.name


def export_backbone(run: str | Path, out: str | Path, fmt: str | None = None,
                    weights: str | None = None,
                    loaded: Callable[[Encoder], None] | None = None) -> tuple[Path, Path]:
    """Write the backbone to `out` and its loading recipe to `out` with suffix .json. `loaded`
    is called with the run's encoder before anything is written (the CLI warns there of a run
    still being trained, whose checkpoint the recipe records as `unfinished`)."""
    out = Path(out)
    if out.suffix not in FILE_LOADERS:
        raise MixDiffError(f"--out {out}: use a file name ending in "
                           f"{', '.join(FILE_LOADERS)} (the suffix picks the format)")
    manifest = out.with_suffix(".json")
    for target in (out, manifest):  # replacing nothing but an earlier export to this --out
        refuse_replacing(target, f"--out {out}", "export",
                         lambda _: _earlier_export(out, manifest))
    encoder = Encoder.from_run(run, weights, "cpu")
    if loaded is not None:
        loaded(encoder)
    fmt = fmt or ("torchvision" if encoder.config.model.backbone.startswith("resnet") else "timm")
    if fmt not in ("torchvision", "timm"):
        raise MixDiffError(f"--format {fmt!r}: choose torchvision or timm")
    constructor = _constructor(encoder, fmt)
    state = {k: v.contiguous() for k, v in encoder.backbone.state_dict().items()}
    with atomic_open(out, "wb") as handle:
        if out.suffix == ".safetensors":
            handle.write(safetensors.torch.save(state, metadata={
                "mixdiff_run": str(encoder.run.root), "weights": encoder.weights}))
        else:
            torch.save(state, handle)
    cfg = encoder.config
    recipe = {
        "format": fmt,
        "file": out.name,
        "architecture": cfg.model.backbone,
        "feature_dim": encoder.feature_dim,
        "load": "\n".join([constructor, FILE_LOADERS[out.suffix].format(file=out.name),
                           "model.load_state_dict(state)  # strict", "model.eval()"]),
        "output": f"(N, {encoder.feature_dim}) pooled features",
        "preprocessing": {"input": "RGB, uint8 CHW -> float in [0, 1]",
                          "resize_ratio": cfg.data.eval_resize, **_preprocessing(encoder)},
        "source": {"run": str(encoder.run.root), "method": cfg.method,
                   "weights": encoder.weights, "checkpoint": encoder.checkpoint_record(),
                   "mixdiff_version": mixdiff.__version__},
    }
    atomic_write_text(manifest, json.dumps(recipe, indent=2) + "\n")
    return out, manifest
