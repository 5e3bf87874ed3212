"""Image corruptions after ImageNet-C (Hendrycks & Dietterich, ICLR 2019), and a pencil-sketch
rendering, as pure functions of an image, a severity, a seed and a pixel scale.

The constants are ImageNet-C's published ones: `make_imagenet_c.py` in hendrycks/robustness
(ImageNet-C/create_c/, commit e0377d46411fa30c01a9559017bdb6a5f78d4abf), written for 224 x 224
images. Here an image of any size is corrupted; `scale` is the size of its pixels relative to
ImageNet-C's (the model's input side / 224). Constants measured in pixels (blur radii, sigmas,
displacements) are multiplied by it, so that a blur covers the same part of what the model sees
at 32 px as at 224 px; per-pixel intensities (noise, contrast, brightness, JPEG quality) and
relative factors (zoom, pixelation) are used as they are.

Left out: frost (it blends in ImageNet-C's frost photographs, which are not available here), fog
and snow (ImageNet-C's other weather corruptions), glass blur (a pixel-by-pixel Python loop, about
0.3 s an image at 224 px, whose 1-4 px swaps vanish below one pixel at small sizes), and of the four
held-out extras all but `saturate`. ImageNet-C also stores each corrupted image as a JPEG of
quality 85; corrupting on the fly does not.

`sketch` is not ImageNet-C's: an inverted edge map that looks like a pencil drawing, a stand-in for
ImageNet-Sketch on any dataset. It has no severities.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from mixdiff.errors import ConfigError

# scipy.ndimage and matplotlib.colors are imported where they are used: the registry below (the
# CLI's help lists it) loads without them.

SEVERITIES = (1, 2, 3, 4, 5)
VERSION = 1  # bump when any corruption's pixels change: it is in the feature cache's tag
IMAGENET_C_SIZE = 224  # the side of the images ImageNet-C's pixel constants were written for

# An image as float64 H x W x 3 in [0, 1] -> the corrupted image (clipped to [0, 1] afterwards).
CorruptionFn = Callable[[np.ndarray, int, np.random.Generator, float], np.ndarray]


# ------------------------------------------------------------------------------------- noise
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]  # ImageNet-C
    return x + rng.normal(size=x.shape, scale=sigma)


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    photons = (60, 25, 12, 5, 3)[severity - 1]  # ImageNet-C
    return rng.poisson(x * photons) / photons


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Salt and pepper on each channel value independently (skimage's `random_noise(mode='s&p')`,
    as ImageNet-C calls it, with half salt)."""
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]  # ImageNet-C
    flipped = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return out


# -------------------------------------------------------------------------------------- blur
def _gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """OpenCV's getGaussianKernel(size, sigma) for sigma > 0."""
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def defocus_kernel(radius: float, alias_blur: float, alias_size: int) -> np.ndarray:
    """ImageNet-C's `disk`: a flat disk of `radius` px, smoothed by a small Gaussian (OpenCV's
    GaussianBlur with `alias_size` taps and sigma `alias_blur`, reflect-101 borders)."""
    from scipy import ndimage

    half = math.ceil(radius) + alias_size // 2  # room for the smoothing to spread
    offsets = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(offsets, offsets)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = _gaussian_kernel_1d(alias_size, alias_blur)
    for axis in (0, 1):
        disk = ndimage.correlate1d(disk, taps, axis=axis, mode="mirror")
    return disk


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    from scipy import ndimage

    radius, alias_blur = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]  # ImageNet-C
    alias_size = 3 if radius <= 8 else 5  # ImageNet-C: 3 x 3 smoothing up to radius 8
    kernel = defocus_kernel(radius * scale, alias_blur, alias_size)
    # OpenCV's filter2D = correlation with reflect-101 borders (scipy's "mirror").
    return np.stack([ndimage.correlate(x[..., c], kernel, mode="mirror") for c in range(3)], -1)


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage, as ImageNet-C calls it through Wand: a one-sided line kernel
    of 2 * radius + 1 taps with Gaussian weights, at a random angle in [-45, 45] degrees, edge
    pixels repeated beyond the border (the NumPy port in bethgelab/imagecorruptions)."""
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]  # ImageNet-C
    angle = np.deg2rad(rng.uniform(-45, 45))
    radius, sigma = round(radius * scale), sigma * scale
    taps = np.exp(-np.arange(2 * radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    height, width = x.shape[:2]
    out = np.zeros_like(x)
    for step, weight in enumerate(taps):
        dy = -math.ceil(step * math.sin(angle) - 0.5)
        dx = -math.ceil(step * math.cos(angle) - 0.5)
        if abs(dy) >= height or abs(dx) >= width:  # the motion left the image
            break
        rows = np.clip(np.arange(height) - dy, 0, height - 1)
        cols = np.clip(np.arange(width) - dx, 0, width - 1)
        out += weight * x[rows][:, cols]
    return out


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """ImageNet-C's clipped_zoom (for any aspect ratio): enlarge the centre by `factor` (linear
    interpolation) and cut it back to the image's size."""
    from scipy import ndimage

    height, width = x.shape[:2]
    crop_h, crop_w = math.ceil(height / factor), math.ceil(width / factor)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    zoomed = ndimage.zoom(x[top:top + crop_h, left:left + crop_w], (factor, factor, 1), order=1)
    top, left = (zoomed.shape[0] - height) // 2, (zoomed.shape[1] - width) // 2
    return zoomed[top:top + height, left:left + width]


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    factors = (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
               np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03))[severity - 1]  # ImageNet-C
    return (x + sum(_clipped_zoom(x, f) for f in factors)) / (len(factors) + 1)


# ----------------------------------------------------------------------------------- digital
def contrast(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    factor = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]  # ImageNet-C
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * factor + means


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    shift = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]  # ImageNet-C: added to HSV value
    hsv = rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
    return hsv_to_rgb(hsv)


def saturate(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Severities 1-2 wash the colours out, 3-5 oversaturate them (ImageNet-C's extra corruption)."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    factor, shift = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[severity - 1]  # ImageNet-C
    hsv = rgb_to_hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor + shift, 0, 1)
    return hsv_to_rgb(hsv)


def _to_pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8))


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]  # ImageNet-C: box down, box up
    image = _to_pil(x)
    small = image.resize((max(1, int(image.width * factor)), max(1, int(image.height * factor))),
                         Image.BOX)
    return np.asarray(small.resize(image.size, Image.BOX), dtype=np.float64) / 255


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    quality = (25, 18, 15, 10, 7)[severity - 1]  # ImageNet-C
    buffer = io.BytesIO()
    _to_pil(x).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float64) / 255


def _affine_through(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 affine map taking three (x, y) points onto three others (cv2.getAffineTransform)."""
    homogeneous = np.hstack([source, np.ones((3, 1))])
    return np.linalg.solve(homogeneous, target).T


def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A small random affine warp, then a smooth random displacement field. ImageNet-C's constants
    are (field amplitude, field smoothness sigma, affine jitter) in pixels of a 224-px image (its
    comment: "244 should have been 224, but ultimately nothing is incorrect")."""
    from scipy import ndimage

    amplitude, smoothness, jitter = (
        (244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
        (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
        (244 * 0.12, 244 * 0.01, 244 * 0.02))[severity - 1]  # ImageNet-C
    height, width = x.shape[:2]

    # Random affine: three points around the centre moved by up to `jitter` px (at 224 px).
    centre = np.array([width // 2, height // 2], dtype=np.float64)
    half = min(height, width) // 3
    points = np.array([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    moved = points + rng.uniform(-jitter, jitter, size=points.shape) * scale
    forward = np.vstack([_affine_through(points, moved), [0, 0, 1]])
    inverse = np.linalg.inv(forward)  # output (x, y) -> input (x, y)
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # (x, y) <-> (row, col)
    matrix = swap @ inverse @ swap
    warped = np.stack([ndimage.affine_transform(x[..., c], matrix, order=1, mode="mirror")
                       for c in range(3)], -1)  # OpenCV's warpAffine: bilinear, reflect-101

    # The displacement field: uniform noise smoothed as skimage's gaussian(mode='reflect',
    # truncate=3) does. Its sigma is in pixels (x scale); smoothing white noise over sigma * scale
    # px instead of sigma px leaves a field 1 / scale times larger, and the displacement must
    # shrink by scale with the pixels: so the amplitude goes with scale ** 2 (exact at 224 px).
    dx, dy = (ndimage.gaussian_filter(rng.uniform(-1, 1, size=(height, width)), smoothness * scale,
                                      mode="reflect", truncate=3) * amplitude * scale ** 2
              for _ in range(2))
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coordinates = [rows + dy, cols + dx]
    return np.stack([ndimage.map_coordinates(warped[..., c], coordinates, order=1, mode="reflect")
                     for c in range(3)], -1)


# --------------------------------------------------------------------------------- rendering
def sketch(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A pencil drawing: the grey image's gradient magnitude (Gaussian derivatives), strongest
    edges darkest, on white. Deterministic; `severity` and `rng` are unused."""
    from scipy import ndimage

    grey = x @ np.array([0.299, 0.587, 0.114])
    edges = ndimage.gaussian_gradient_magnitude(grey, sigma=max(0.7, 1.5 * scale))
    strongest = np.percentile(edges, 99)
    ink = np.clip(edges / strongest, 0, 1) if strongest > 0 else np.zeros_like(edges)
    return np.repeat((1 - ink)[..., None], 3, axis=-1)


# ---------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Corruption:
    apply: CorruptionFn
    graded: bool = True  # False: one rendering, no severities (sketch)

    @property
    def name(self) -> str:
        return self.apply.__name__


# ImageNet-C's noise, blur and digital groups (less the corruptions left out), then the sketch.
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption(gaussian_noise), Corruption(shot_noise), Corruption(impulse_noise),
    Corruption(defocus_blur), Corruption(motion_blur), Corruption(zoom_blur),
    Corruption(contrast), Corruption(brightness), Corruption(saturate), Corruption(pixelate),
    Corruption(jpeg_compression), Corruption(elastic_transform),
    Corruption(sketch, graded=False),
)}


def seed_for(key: str, corruption: str, severity: int) -> int:
    """A 64-bit seed from an image's key (its path relative to the dataset root), the corruption
    and the severity: the same image always gets the same noise, whatever else is evaluated."""
    digest = hashlib.sha256(f"{key}\0{corruption}\0{severity}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def corrupt(image: Image.Image | np.ndarray, corruption: str, severity: int, seed: int,
            scale: float = 1.0) -> Image.Image:
    """`image` (PIL, or uint8 H x W x 3) corrupted by `corruption` at `severity` (1-5; ignored by
    ungraded ones), with randomness from `seed`, at pixel `scale` (see the module docstring)."""
    spec = CORRUPTIONS.get(corruption)
    if spec is None:
        raise ConfigError(f"unknown corruption {corruption!r}; choose from: {', '.join(CORRUPTIONS)}")
    if spec.graded and severity not in SEVERITIES:
        raise ConfigError(f"severity {severity} of {corruption} is not one of {SEVERITIES}")
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    x = array.astype(np.float64) / 255
    return _to_pil(spec.apply(x, severity, np.random.default_rng(seed), scale))
