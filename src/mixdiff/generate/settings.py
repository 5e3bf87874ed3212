"""The settings of a generation run, their per-generator defaults, and per-image seeds."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, replace

from mixdiff.devices import resolve_device
from mixdiff.errors import ConfigError
from mixdiff.schema import check, cli_option, differences, rules, seed_setting, setting

log = logging.getLogger(__name__)

GENERATORS = ("sd-image-variations", "versatile-diffusion", "unclip", "sdedit")
SCHEDULERS = ("default", "ddim", "pndm", "dpm-solver++", "euler", "euler-ancestral", "ddpm")
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
DTYPES = ("auto", "fp32", "fp16", "bf16")

# (model, revision, steps, guidance, resolution) when the user gives none. resolution None: the
# model's own. sdedit's default is the DDPM shipped in the package (mixdiff.generate.embedded).
# Versatile Diffusion: guidance 3.0 as in the MixDiff authors' generation script (not the
# pipeline's 7.5).
DEFAULTS = {
    "sd-image-variations": ("lambdalabs/sd-image-variations-diffusers", "v2.0", 50, 3.0, 512),
    "versatile-diffusion": ("shi-labs/versatile-diffusion", None, 50, 3.0, 512),
    "unclip": ("stabilityai/stable-diffusion-2-1-unclip", None, 50, 10.0, 768),
    "sdedit": ("embedded:fashion-mnist-ddpm", None, 50, 0.0, None),
}

# Generators that denoise in a VAE's latent space: the output side must be a multiple of the
# VAE's downsampling factor, 8 for every Stable Diffusion-family VAE these models ship with.
LATENT_GENERATORS = ("sd-image-variations", "versatile-diffusion", "unclip")
VAE_SCALE_FACTOR = 8

# The options only some generators (or formats) use; elsewhere a value given is ignored, said so,
# and neither recorded in the manifest nor compared on a re-run.
USED_BY = {
    "guidance": ("sd-image-variations", "versatile-diffusion", "unclip"),
    "strength": ("sdedit",),
    "noise_level": ("unclip",),
    "safety_checker": ("sd-image-variations",),
}
LOSSY_FORMATS = ("jpg", "webp")  # --quality applies to these
# Options that may be a list (a mixture, as DA-Fusion's strengths): each image draws its own value
# from its own seed, and its manifest row records the value drawn.
MIXABLE = ("strength", "noise_level")


def unused_options(generator: str, fmt: str) -> tuple[str, ...]:
    """The options of USED_BY (and --quality) that this generator and format ignore."""
    unused = [name for name, users in USED_BY.items() if generator not in users]
    return (*unused, "quality") if fmt not in LOSSY_FORMATS else tuple(unused)

@dataclass(frozen=True)
class GenerateSettings:
    """A generation run. The fields declared produces=False (how many variants, batch size,
    device, compilation) may change between runs on one OUT; every other one must stay, since it
    changes the images (or --overwrite)."""

    generator: str = setting("sd-image-variations", choices=GENERATORS)
    model: str | None = None  # a Hugging Face id or a local folder
    revision: str | None = None
    steps: int | None = setting(None, least=1)
    guidance: float | None = None
    scheduler: str = setting("default", choices=SCHEDULERS)  # default: the pipeline's own
    resolution: int | None = setting(None, least=1)
    variants: int = setting(1, least=1, produces=False)
    seed: int = seed_setting()
    batch_size: int = setting(8, least=1, produces=False)
    dtype: str = setting("auto", choices=DTYPES)  # fp16 on a GPU, fp32 on the CPU
    device: str = setting("auto", produces=False)  # checked against the machine: resolve_device
    # sdedit: how far the image is noised (0: unchanged, 1: pure noise)
    # (a tuple of several: a mixture, see MIXABLE)
    strength: float | tuple[float, ...] = setting(0.5, above=0.0, most=1.0)
    # unclip: noise added to the image embedding (a tuple of several: a mixture)
    noise_level: int | tuple[int, ...] = setting(0, least=0)
    # JPEG at quality 95: 5.6x faster to decode than PNG at 512 px (2.5 vs 14.3 ms), a quarter of
    # the bytes, 40.9 dB PSNR (benchmarks/decode_formats.py), and draft/nvJPEG decoding apply
    format: str = setting("jpg", choices=tuple(FORMATS))
    quality: int = setting(95, least=1, most=100)  # jpg / webp
    # store with the short side resized to this (authors: 256)
    save_size: int | None = setting(None, least=1)
    safety_checker: bool = False  # off, as in the paper
    # torch.compile the denoiser; None: on a GPU (1.57x on an H200)
    compile: bool | None = setting(None, produces=False)
    # not an option: the runner fills it in. The sha256 of a local --model folder's files, so that
    # a model retrained since is a changed setting (None: a hub id, whose revision names it)
    model_sha256: str | None = None

    def resolved(self) -> "GenerateSettings":
        """Fill in the generator's defaults and check every value. Options this generator (or
        format) does not use are reset to their defaults, with a warning if one was given."""
        check(asdict(self), GenerateSettings, cli_option)
        # a mixture of one value is that value
        self = replace(self, **{name: _one_or_all(getattr(self, name)) for name in MIXABLE})
        model, revision, steps, guidance, resolution = DEFAULTS[self.generator]
        unused = {name: getattr(GenerateSettings, name)
                  for name in unused_options(self.generator, self.format)}
        for name, default in unused.items():
            if getattr(self, name) not in (default, None):
                log.warning("--%s %s is not used by %s: ignored", name.replace("_", "-"),
                            getattr(self, name), self.generator if name != "quality" else
                            f"--format {self.format}")
        done = replace(
            replace(self, **unused), model=self.model if self.model is not None else model,
            revision=self.revision if self.revision is not None or self.model else revision,
            steps=self.steps if self.steps is not None else steps,
            guidance=(self.guidance if self.guidance is not None else guidance)
            if "guidance" not in unused else None,
            resolution=self.resolution if self.resolution is not None else resolution,
            device=resolve_device(self.device))
        if done.compile is None:
            done = replace(done, compile=done.device.startswith("cuda"))
        if done.dtype == "auto":
            done = replace(done, dtype="fp16" if done.device.startswith("cuda") else "fp32")
        if done.generator in LATENT_GENERATORS and done.resolution % VAE_SCALE_FACTOR:
            nearest = max(1, round(done.resolution / VAE_SCALE_FACTOR)) * VAE_SCALE_FACTOR
            raise ConfigError(
                f"--resolution {done.resolution}: {done.generator} denoises in a VAE latent space "
                f"{VAE_SCALE_FACTOR}x smaller, so the side must be a multiple of "
                f"{VAE_SCALE_FACTOR} (e.g. {nearest})")
        return done

    def output_settings(self) -> dict:
        """The settings that change the images, as generate.yaml records them (lists, not
        tuples, so that they compare equal once read back)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k in OUTPUT_KEYS}

    def values(self, name: str) -> tuple:
        """The values of a mixable option: one, or the mixture's."""
        value = getattr(self, name)
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)

    def drawn(self, seed: int) -> dict:
        """The image of `seed`'s values of the mixtures this generator uses (none without)."""
        return {name: draw(self.values(name), seed, name) for name in MIXABLE
                if self.generator in USED_BY[name] and len(self.values(name)) > 1}


def _one_or_all(value):
    """A mixture of one value is that value (so `--strength 0.3` and `0.3,0.3` read alike, and an
    OUT made before mixtures existed still matches); several stay a tuple, in the given order."""
    if isinstance(value, (list, tuple)):
        unique = tuple(dict.fromkeys(value))
        return unique[0] if len(unique) == 1 else unique
    return value


def draw(values: tuple, seed: int, name: str):
    """One of `values` for the image whose seed is `seed`: from the seed alone, so an image draws
    the same value in any batch, shard or re-run (and independently of its noise)."""
    if len(values) == 1:
        return values[0]
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return values[int.from_bytes(digest[:8], "little") % len(values)]


def parse_values(text: str, kind: type, option: str) -> float | int | tuple:
    """'0.2,0.3,0.5' -> (0.2, 0.3, 0.5); '0.3' -> 0.3 (the value of a mixable option)."""
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give a number or a comma-separated list of "
                          f"numbers (e.g. 0.2,0.3,0.5)") from None
    if not values:
        raise ConfigError(f"{option} {text!r}: give at least one value")
    return values[0] if len(values) == 1 else values


# Settings that change the images: a re-run on an existing OUT must keep them (or --overwrite).
OUTPUT_KEYS = tuple(key for key, rule in rules(GenerateSettings).items() if rule.produces)


# Recorded facts that an OUT written before they were recorded lacks: unknown there, not changed
RECORDED_SINCE = ("model_sha256",)


def changed_settings(saved: dict, current: dict) -> list[str]:
    """The output keys whose values differ, but for those the generator does not use (an OUT
    written before they were reset still matches) and the RECORDED_SINCE that `saved` lacks."""
    unused = unused_options(current.get("generator"), current.get("format"))
    unknown = tuple(key for key in RECORDED_SINCE if key not in saved)
    return differences({k: saved.get(k) for k in OUTPUT_KEYS},
                       {k: current.get(k) for k in OUTPUT_KEYS}, ignore=unused + unknown)


def image_seed(global_seed: int, key: str, variant: int) -> int:
    """The seed of one output, from (global seed, relative path without extension, variant):
    never from the order in which files are visited, so batches and shards agree."""
    digest = hashlib.sha256(f"{global_seed}\0{key}\0{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r} is not of the form I/N (e.g. 0/4)") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return index, count
