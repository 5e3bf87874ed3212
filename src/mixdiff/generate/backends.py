"""Generators: diffusers pipelines that turn a batch of real images into variations.

Each backend loads its pipeline once, then maps (images, seeds) -> images. Every output's noise
comes from a CPU `torch.Generator` seeded for that output alone, so an image does not depend on
the batch it was generated in, nor on the device's random number generator.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from mixdiff.errors import ConfigError, MixDiffError
from mixdiff.generate.settings import USED_BY, GenerateSettings
from mixdiff.io import file_sha256

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class GeneratorLoadError(MixDiffError):
    """A model id or folder that cannot be loaded."""


def sd_variation_preprocess(images: list[Image.Image], size: int = 224) -> torch.Tensor:
    """What the SD image-variations model card requires: ToTensor, Resize((224, 224), bicubic,
    antialias=False), CLIP mean/std. The model was trained on inputs made this way; the
    pipeline's own CLIPImageProcessor (antialiased, centre-cropped) gives worse variations."""
    transform = v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=False),
        v2.Normalize(CLIP_MEAN, CLIP_STD)])
    return torch.stack([transform(image.convert("RGB")) for image in images])


# The MixDiff authors' Versatile Diffusion input: the image squashed to this square (a plain
# resize, no crop), then handed to the pipeline, whose CLIP processor brings it to 224.
VD_INPUT_SIDE = 512


def squash(images: list[Image.Image], side: int = VD_INPUT_SIDE) -> list[Image.Image]:
    """The authors' Versatile Diffusion preprocessing: ToTensor, Resize((side, side), bicubic,
    antialias=False), back to 8 bits. The aspect ratio is not kept, so nothing is cropped away.
    (Their `(x * 255).byte()` truncates and wraps bicubic overshoots; here they are clamped and
    rounded.)"""
    transform = v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Resize((side, side), interpolation=InterpolationMode.BICUBIC, antialias=False)])
    return [v2.functional.to_pil_image(
        transform(image.convert("RGB")).clamp(0, 1).mul(255).round().to(torch.uint8))
        for image in images]


def _scheduler_class(name: str):
    import diffusers

    return {"ddim": (diffusers.DDIMScheduler, {}), "pndm": (diffusers.PNDMScheduler, {}),
            "dpm-solver++": (diffusers.DPMSolverMultistepScheduler,
                             {"algorithm_type": "dpmsolver++"}),
            "euler": (diffusers.EulerDiscreteScheduler, {}),
            "euler-ancestral": (diffusers.EulerAncestralDiscreteScheduler, {}),
            "ddpm": (diffusers.DDPMScheduler, {})}[name]


def looks_like_path(model: str) -> bool:
    """A --model that names a folder rather than a Hugging Face id ("org/name"): absolute, starting
    with ./ ../ or ~, more than one '/', or a path that exists."""
    return (model.startswith(("/", "./", "../", "~")) or model in (".", "..")
            or model.count("/") > 1 or Path(model).exists())


def model_source(model: str) -> str | Path:
    """What `from_pretrained` gets: an existing folder, or a hub id. A path that does not exist
    is one clear error, not the hub's "neither a valid local path nor a valid repo id"."""
    if not looks_like_path(model):
        return model
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise GeneratorLoadError(f"--model: local folder not found: {folder}"
                                 + (" (it is a file; pass the pipeline's folder, the one with "
                                    "model_index.json)" if folder.exists() else ""))
    return folder


def model_folder(model: str) -> Path | None:
    """The local folder a --model names (the embedded DDPM's included); None for a hub id."""
    from mixdiff.generate.embedded import EMBEDDED_DIR, EMBEDDED_ID

    source = EMBEDDED_DIR if model == EMBEDDED_ID else model_source(model)
    return source if isinstance(source, Path) else None


def model_fingerprint(model: str) -> str | None:
    """The sha256 of a local model folder's content: every file but hidden ones (a download's
    `.cache`), by relative path and sha256. A folder retrained since (`mixdiff train-generator`)
    gives another. None for a hub id: its --revision names its content."""
    folder = model_folder(model)
    if folder is None:
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if not any(part.startswith(".") for part in relative.parts):
            digest.update(f"{relative.as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def load_pipeline(cls, settings: GenerateSettings, source: str | Path | None = None, **kwargs):
    """`cls.from_pretrained` with an error that names the model and says how to go offline."""
    source = source or model_source(settings.model)
    try:
        return cls.from_pretrained(source, revision=settings.revision,
                                   dtype=DTYPES[settings.dtype], **kwargs)
    except Exception as exc:  # OSError, ValueError, HFValidationError, EntryNotFoundError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        at = f" at revision {settings.revision!r}" if settings.revision else ""
        if isinstance(source, Path):
            raise GeneratorLoadError(f"cannot load the {settings.generator} pipeline from the "
                                     f"local folder {source}{at}: {reason}") from None
        revision = f" --revision {settings.revision}" if settings.revision else ""
        raise GeneratorLoadError(
            f"cannot load the {settings.generator} Hugging Face model id {settings.model!r}{at}: "
            f"{reason}\nOn a machine without network access, download it where there is one "
            f"(`hf download {settings.model}{revision} --local-dir DIR`) and pass "
            f"--model DIR.") from None


class Backend:
    """Base: device, dtype, scheduler choice, and the seeds -> generators step."""

    preprocessing = ""

    def __init__(self, settings: GenerateSettings):
        self.settings = settings
        self.device = torch.device(settings.device)
        self.dtype = DTYPES[settings.dtype]
        self.pipe = self.load()
        if settings.scheduler != "default":
            cls, extra = _scheduler_class(settings.scheduler)
            self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config, **extra)
        self.check_resolution()
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        denoiser = "image_unet" if hasattr(self.pipe, "image_unet") else "unet"
        self._speed_up(getattr(self.pipe, denoiser), getattr(self.pipe, "vae", None))
        if settings.compile:
            setattr(self.pipe, denoiser, torch.compile(getattr(self.pipe, denoiser)))

    @staticmethod
    def _speed_up(denoiser, vae) -> None:
        """diffusers' standard recipe: channels_last convolutions, and one fused QKV projection
        instead of three in the denoiser's attention (identical maths)."""
        for module in (denoiser, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
        if hasattr(denoiser, "fuse_qkv_projections"):
            denoiser.fuse_qkv_projections()

    def check_resolution(self) -> None:
        """The output side must be a multiple of the pipeline's own VAE factor (the settings
        checked 8, what the released models use; a custom model may differ)."""
        factor = getattr(self.pipe, "vae_scale_factor", None)
        if factor and self.settings.resolution % factor:
            raise ConfigError(f"--resolution {self.settings.resolution}: the VAE of "
                              f"{self.settings.model} downsamples {factor}x, so the side must be "
                              f"a multiple of {factor}")

    @property
    def output_resolution(self) -> int | None:
        return self.settings.resolution

    def provenance(self) -> dict:
        """How every output of this backend is made, as the manifest records it."""
        s = self.settings
        record = {"generator": s.generator, "model": s.model, "revision": s.revision,
                  "model_sha256": s.model_sha256, "scheduler": self.scheduler_name,
                  "steps": s.steps, "resolution": self.output_resolution, "dtype": s.dtype,
                  "preprocessing": self.preprocessing}
        for name, users in USED_BY.items():  # only what this generator uses
            if s.generator in users:
                record[name] = getattr(s, name)
        return record

    @property
    def scheduler_name(self) -> str:
        return type(self.pipe.scheduler).__name__

    def load(self):
        raise NotImplementedError

    def __call__(self, images: list[Image.Image], seeds: list[int]) -> list[Image.Image]:
        raise NotImplementedError

    def variations(self, images: list[Image.Image], seeds: list[int],
                   drawn: dict) -> list[Image.Image]:
        """`self(images, seeds)` with the values these images drew from a mixture (e.g. one
        strength of several) in place of the settings' lists."""
        kept, self.settings = self.settings, replace(self.settings, **drawn)
        try:
            return self(images, seeds)
        finally:
            self.settings = kept

    @staticmethod
    def generators(seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    def _safety(self) -> dict:
        if self.settings.safety_checker:
            return {}
        return {"safety_checker": None, "requires_safety_checker": False}


class SDImageVariations(Backend):
    """`StableDiffusionImageVariationPipeline` (lambdalabs/sd-image-variations-diffusers v2.0)."""

    preprocessing = "ToTensor; Resize((224, 224), bicubic, antialias=False); CLIP mean/std"

    def load(self):
        from diffusers import StableDiffusionImageVariationPipeline

        return load_pipeline(StableDiffusionImageVariationPipeline, self.settings, **self._safety())

    def __call__(self, images, seeds):
        size = self.pipe.image_encoder.config.image_size  # 224 for the real model
        pixels = sd_variation_preprocess(images, size).to(self.device, self.dtype)
        s = self.settings
        return self.pipe(image=pixels, height=s.resolution, width=s.resolution,
                         num_inference_steps=s.steps, guidance_scale=s.guidance,
                         generator=self.generators(seeds), output_type="pil").images


class VersatileDiffusion(Backend):
    """Versatile Diffusion's image-variation pipeline (shi-labs/versatile-diffusion), fed as the
    MixDiff authors fed it: the image squashed to 512x512 (no centre crop of a wide image)."""

    preprocessing = (f"ToTensor; Resize(({VD_INPUT_SIDE}, {VD_INPUT_SIDE}), bicubic, "
                     "antialias=False) (squashed, not cropped); 8-bit; then the pipeline's "
                     "CLIPImageProcessor")

    def load(self):
        from diffusers import VersatileDiffusionImageVariationPipeline

        return load_pipeline(VersatileDiffusionImageVariationPipeline, self.settings)

    def __call__(self, images, seeds):
        s = self.settings
        return self.pipe(image=squash(images), height=s.resolution,
                         width=s.resolution, num_inference_steps=s.steps,
                         guidance_scale=s.guidance, generator=self.generators(seeds),
                         output_type="pil").images


class UnCLIP(Backend):
    """`StableUnCLIPImg2ImgPipeline` (stabilityai/stable-diffusion-2-1-unclip): the image's CLIP
    embedding, optionally noised (`--noise-level`), conditions SD 2.1 with an empty prompt."""

    preprocessing = "the pipeline's CLIPImageProcessor"

    def load(self):
        from diffusers import StableUnCLIPImg2ImgPipeline

        return load_pipeline(StableUnCLIPImg2ImgPipeline, self.settings)

    def __call__(self, images, seeds):
        s = self.settings
        return self.pipe(image=[im.convert("RGB") for im in images], prompt=[""] * len(images),
                         height=s.resolution, width=s.resolution, num_inference_steps=s.steps,
                         guidance_scale=s.guidance, noise_level=s.noise_level,
                         generator=self.generators(seeds), output_type="pil").images


class SDEdit(Backend):
    """SDEdit (Meng et al., 2022) with an unconditional `UNet2DModel`: noise the image to
    `strength` of the schedule, then denoise it. Without --model: the embedded Fashion-MNIST DDPM."""

    def load(self):
        from diffusers import DDPMPipeline

        from mixdiff.generate.embedded import EMBEDDED_DIR, EMBEDDED_ID

        source = EMBEDDED_DIR if self.settings.model == EMBEDDED_ID else None
        return load_pipeline(DDPMPipeline, self.settings, source)

    @property
    def preprocessing(self) -> str:
        unet = self.pipe.unet.config
        mode = "grey" if unet.in_channels == 1 else "RGB"
        steps = (f"{mode}; Resize({unet.sample_size}, bicubic, antialias); "
                 f"CenterCrop({unet.sample_size}); scale to [-1, 1]")
        if self.output_resolution != unet.sample_size:
            steps += (f"; output resized {unet.sample_size} -> {self.output_resolution} px, "
                      "bicubic")
        return steps

    @property
    def output_resolution(self) -> int:
        return self.settings.resolution or self.pipe.unet.config.sample_size

    @cached_property
    def _to_model_input(self) -> v2.Compose:
        size = self.pipe.unet.config.sample_size
        return v2.Compose([
            v2.PILToTensor(),
            v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])

    @torch.no_grad()
    def __call__(self, images, seeds):
        unet, scheduler, s = self.pipe.unet, self.pipe.scheduler, self.settings
        size, channels = unet.config.sample_size, unet.config.in_channels
        x0 = torch.stack([self._to_model_input(im.convert("L" if channels == 1 else "RGB"))
                          for im in images])
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in self.generators(seeds)])
        x0, noise = x0.to(self.device, self.dtype), noise.to(self.device, self.dtype)
        scheduler.set_timesteps(s.steps, device=self.device)
        start = s.steps - max(1, round(s.steps * s.strength))
        timesteps = scheduler.timesteps[start:]
        x = scheduler.add_noise(x0, noise, timesteps[:1].repeat(len(images)))
        step_generators = self.generators([seed + 1 for seed in seeds])  # ancestral samplers
        for t in timesteps:
            model_input = scheduler.scale_model_input(x, t)
            x = scheduler.step(unet(model_input, t).sample, t, x,
                               generator=step_generators).prev_sample
        pixels = ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        outputs = [Image.fromarray(p.squeeze(0).numpy() if channels == 1 else
                                   p.permute(1, 2, 0).numpy()) for p in pixels]
        if self.output_resolution != size:  # as `preprocessing` records
            side = self.output_resolution
            outputs = [im.resize((side, side), Image.BICUBIC) for im in outputs]
        return outputs


GENERATOR_BACKENDS = {"sd-image-variations": SDImageVariations,
                      "versatile-diffusion": VersatileDiffusion, "unclip": UnCLIP, "sdedit": SDEdit}


def build_backend(settings: GenerateSettings) -> Backend:
    return GENERATOR_BACKENDS[settings.generator](settings)

