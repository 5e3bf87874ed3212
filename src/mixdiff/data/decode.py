"""Decoding a training image no larger than its views need: JPEG draft mode.

A JPEG decoder can scale by 1/2, 1/4 or 1/8 inside its inverse DCT for a fraction of the full
decode's cost (PIL's `Image.draft`). A view must never lose resolution to it, so the reduction is
the largest that still leaves every view at least its output side in pixels:

  * a random-resized crop of scale >= s and aspect ratio in [3/4, 4/3] cut from a W x H image is
    never narrower than sqrt(s * 3/4 * W * H) pixels in either direction (its area is at least
    s * W * H, and an aspect ratio r makes the short side sqrt(area * min(r, 1/r))); scaled by 1/f
    that side stays >= the output side N while f <= sqrt(s * 3/4 * W * H) / N;
  * a plain view (short side resized to N, centre crop) needs f <= min(W, H) / N.

At 224 px with the default crop scale 0.08 this never reduces an image below 915 px; it pays for
large originals, for small outputs (DINO's 96 px local crops) and for the plain views.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps

from mixdiff.errors import UnreadableImageError

RATIO_MIN = 3 / 4  # RandomResizedCrop's default aspect-ratio range is [3/4, 4/3]


class ViewNeed(NamedTuple):
    """What one view reads from its image: its output side, and the smallest crop scale (None for
    a plain view, which resizes the whole short side)."""

    size: int
    min_scale: float | None


def max_reduction(width: int, height: int, needs: Sequence[ViewNeed]) -> float:
    """The largest factor by which a width x height image may shrink before it is decoded, such
    that every view still gets at least its output side in source pixels (>= 1: never enlarge)."""
    factors = [min(width, height) / need.size if need.min_scale is None else
               math.sqrt(need.min_scale * RATIO_MIN * width * height) / need.size
               for need in needs]
    return max(1.0, min(factors, default=1.0))


def draft_request(width: int, height: int, needs: Sequence[ViewNeed]) -> tuple[int, int] | None:
    """The size to pass to `Image.draft`, or None when no reduction is allowed. PIL picks the
    largest of 8, 4, 2, 1 that is <= min(W // w, H // h) <= the allowed factor, and decodes to
    ceil(W / scale) x ceil(H / scale): never smaller than W / factor x H / factor."""
    factor = max_reduction(width, height, needs)
    if factor < 2:
        return None
    return math.ceil(width / factor), math.ceil(height / factor)


class UnsupportedPixels(ValueError):
    """An image that decodes, but whose values mixdiff cannot map to 8-bit RGB unguessed."""


@contextmanager
def naming_errors(path: str | Path) -> Iterator[None]:
    """Reading an image inside this block: any failure becomes an error naming the file."""
    try:
        yield
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except UnsupportedPixels as exc:
        raise UnreadableImageError(path, str(exc)) from None
    except Exception as exc:  # PIL raises many types for corrupt or truncated data
        raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from None


def load_rgb_for(path: str | Path, needs: Sequence[ViewNeed] | None) -> Image.Image:
    """Open and decode an image as RGB, a JPEG at the reduced size `needs` allow (None: full
    size); a broken file raises an error naming it."""
    with naming_errors(path), Image.open(path) as image:
        request = draft_request(*image.size, needs) if needs else None
        if request is not None:
            image.draft("RGB", request)  # JPEG only: other formats ignore it
        image.load()
        return to_rgb(upright(image))


def is_rotated(image: Image.Image) -> bool:
    """Whether the file's EXIF orientation asks for its pixels to be turned or mirrored (a phone's
    portrait photo is stored sideways with this tag; every viewer shows it upright)."""
    return image.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None)


def upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation applied (in place: no copy)."""
    if is_rotated(image):
        ImageOps.exif_transpose(image, in_place=True)
    return image


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's modes of 16-bit PNG/TIFF


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB at 8 bits per channel. PIL's own `convert("RGB")` clips 16-bit grey values at 255, so
    a 16-bit PNG would come out almost white: its values are scaled to 8 bits instead. Likewise a
    floating-point image (a 32-bit float TIFF): PIL clips its 0..1 to black; it is scaled by 255,
    and one with other values is refused (what its white is cannot be known)."""
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise UnsupportedPixels(
                f"a floating-point image with values from {values.min():g} to {values.max():g}: "
                "read as 0 (black) to 1 (white), so they must lie in [0, 1]; save it as an "
                "8-bit image (or scaled to [0, 1])")
        image = Image.fromarray(np.round(values * 255).astype(np.uint8), mode="L")
    elif image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((values >> 8).clip(0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")
