"""The corruptions of the robustness suite: ImageNet-C's constants, determinism, severity order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mixdiff.errors import ConfigError
from mixdiff.evaluate.corruptions import CORRUPTIONS, SEVERITIES, corrupt, seed_for

GRADED = [name for name, spec in CORRUPTIONS.items() if spec.graded]
# ImageNet-C's corruptions whose strength grows with the severity by construction (saturate
# washes colours out at 1-2 and oversaturates at 3-5; elastic's severities 1-2 warp broadly,
# 3-5 locally): the mean absolute change from the clean image must grow with them.
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur",
            "zoom_blur", "contrast", "brightness", "pixelate", "jpeg_compression"]


def textured(height: int = 32, width: int = 40) -> np.ndarray:
    """A non-square colour image with gradients, a sharp-edged block and fine texture."""
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 255 / width, yy * 255 / height,
                      128 + 60 * np.sin(xx / 3) * np.cos(yy / 4)], -1)
    image[8:20, 10:25] = [230, 40, 40]
    return np.clip(image, 0, 255).astype(np.uint8)


def mean_change(image: np.ndarray, name: str, severity: int, scale: float = 1.0) -> float:
    out = np.asarray(corrupt(image, name, severity, seed=7, scale=scale), dtype=float)
    return float(np.abs(out - image).mean())


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_changes_the_image_and_keeps_its_shape(name):
    image = textured()
    for severity in SEVERITIES if CORRUPTIONS[name].graded else (0,):
        out = corrupt(image, name, severity, seed=3)
        assert isinstance(out, Image.Image) and out.mode == "RGB"
        assert out.size == (40, 32)
        assert mean_change(image, name, severity) > 0.5, (name, severity)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_image_corruption_severity_and_seed_give_the_same_bytes(name):
    image = Image.fromarray(textured())
    severity = 3 if CORRUPTIONS[name].graded else 0
    first = corrupt(image, name, severity, seed=11, scale=0.5).tobytes()
    assert corrupt(image, name, severity, seed=11, scale=0.5).tobytes() == first


def test_the_seed_drives_the_randomness():
    image = textured()
    one, two = (corrupt(image, "gaussian_noise", 2, seed=s).tobytes() for s in (1, 2))
    assert one != two


@pytest.mark.parametrize("name", MONOTONE)
def test_severity_order(name):
    changes = [mean_change(textured(), name, s) for s in SEVERITIES]
    assert all(b > a for a, b in zip(changes, changes[1:])), changes


def test_noise_constants_are_imagenet_c():
    """On mid-grey (no clipping) the noise has ImageNet-C's spread: Gaussian sigma 0.08 at
    severity 1, shot noise of 60 'photons' (variance x / 60), 3% of values flipped by impulse."""
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    x = 128 / 255
    gaussian = np.asarray(corrupt(grey, "gaussian_noise", 1, seed=0), float) / 255 - x
    assert gaussian.std() == pytest.approx(0.08, rel=0.05)
    shot = np.asarray(corrupt(grey, "shot_noise", 1, seed=0), float) / 255
    assert shot.var() == pytest.approx(x / 60, rel=0.1)
    impulse = np.asarray(corrupt(grey, "impulse_noise", 1, seed=0))
    flipped = (impulse != 128).mean()
    assert flipped == pytest.approx(0.03, abs=0.006)
    assert set(np.unique(impulse)) == {0, 128, 255}


def test_contrast_is_imagenet_c_formula():
    image = textured()
    x = image / 255
    means = x.mean(axis=(0, 1), keepdims=True)
    expected = np.round(np.clip((x - means) * 0.4 + means, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(corrupt(image, "contrast", 1, seed=0)), expected)


def test_spatial_constants_follow_the_pixel_scale():
    """A blur of 3 px at 224 px is a fraction of a pixel on an image the model sees at 32 px:
    the same severity changes a small-scale image less."""
    image = textured()
    for name in ("defocus_blur", "motion_blur"):
        assert mean_change(image, name, 3, scale=32 / 224) < mean_change(image, name, 3) / 2


def test_pixelate_makes_blocks():
    out = np.asarray(corrupt(textured(40, 40), "pixelate", 5, seed=0))  # 40 -> 10 -> 40
    blocks = out.reshape(10, 4, 10, 4, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()


def test_sketch_is_a_dark_on_white_edge_map_without_randomness():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[8:24, 8:24] = 200  # one bright square: its outline is the only edge
    one = np.asarray(corrupt(image, "sketch", 0, seed=1))
    assert np.array_equal(one, np.asarray(corrupt(image, "sketch", 0, seed=2)))
    assert (one[..., 0] == one[..., 1]).all() and (one[..., 1] == one[..., 2]).all()
    grey = one[..., 0].astype(int)
    assert grey[0:4, 0:4].min() == 255 and grey[14:18, 14:18].min() == 255  # flat: white
    assert grey[16, 6:10].min() < 100  # across the square's left edge: dark ink


def test_seed_for_depends_on_every_part():
    seeds = {seed_for(k, c, s) for k in ("a/1.png", "a/2.png") for c in ("gaussian_noise", "shot_noise")
             for s in (1, 2)}
    assert len(seeds) == 8
    assert seed_for("a/1.png", "gaussian_noise", 1) == seed_for("a/1.png", "gaussian_noise", 1)


def test_unknown_corruption_or_severity_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown corruption 'fog'.*gaussian_noise"):
        corrupt(textured(), "fog", 1, seed=0)
    with pytest.raises(ConfigError, match="severity 6 of contrast"):
        corrupt(textured(), "contrast", 6, seed=0)
