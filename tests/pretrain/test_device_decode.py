"""data.decode=device: the workers only read files and draw crops; the training device decodes and
cuts. Its views are the CPU path's views (same crop boxes and flips from the same random state,
same decoder output, another resampler), odd files fall back to CPU decoding, and runs train."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from mixdiff.config import load_config
from mixdiff.pretrain.input import device_decode
from mixdiff.pretrain.input.datamodule import MixDiffDataModule
from mixdiff.data.decode import load_rgb_for
from mixdiff.errors import ConfigError, UnreadableImageError
from mixdiff.pretrain.train import pretrain

from conftest import tiny_overrides

# (height, width) of each image; the grey JPEG, the CMYK JPEG and the PNG test the decoders'
# fallbacks, 300 x 140 and 190 x 250 sit in size buckets with padding past their edges
SIZES = [(190, 250), (200, 200), (300, 140), (120, 160)]


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory) -> Path:
    """real/ and syn/ trees of photo crops: JPEGs (RGB and greyscale), a CMYK JPEG and a PNG."""
    from skimage import data as photos

    root = tmp_path_factory.mktemp("photos")
    sources = [photos.astronaut(), photos.coffee(), photos.chelsea()]
    for split in ("real", "syn"):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i, (h, w) in enumerate(SIZES):
                image = Image.fromarray(sources[(i + c) % 3]).resize((w, h))
                if split == "syn" and i == 3:
                    image.save(folder / f"{i}.png")
                elif split == "syn" and i == 2:
                    image.convert("CMYK").save(folder / f"{i}.jpg", quality=95)
                elif split == "real" and i == 1:
                    image.convert("L").save(folder / f"{i}.jpg", quality=95)
                else:
                    image.save(folder / f"{i}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def big_photo_tree(tmp_path_factory) -> Path:
    """Photos of several megapixels, which JPEG draft mode may shrink for 96 px views."""
    from skimage import data as photos

    root = tmp_path_factory.mktemp("big")
    for split, (h, w) in (("real", (1800, 2400)), ("syn", (2048, 2048))):
        for c, source in enumerate((photos.astronaut(), photos.coffee())):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            Image.fromarray(source).resize((w, h)).save(folder / "0.jpg", quality=90)
    return root


def _data_module(root: Path, decode: str, recipe: str, **extra) -> MixDiffDataModule:
    settings = {"data.real": root / "real", "data.synthetic": f"[{root / 'syn'}]",
                "data.mode": "mixdiff", "data.image_size": 96, "augment.recipe": recipe,
                "data.decode": decode, "data.val_fraction": 0.0, "data.num_workers": 0, **extra}
    if recipe == "dino":
        settings.update({"method": "dino", "model.backbone": "vit_tiny", "model.patch_size": 8})
    dm = MixDiffDataModule(load_config(None, [f"{k}={v}" for k, v in settings.items()]))
    dm.setup()
    return dm


def _pixels(image: device_decode.ImageFile) -> torch.Tensor:
    return decode_jpeg(image.payload, mode=ImageReadMode.RGB) if image.encoded else image.payload


def _device_views(dm: MixDiffDataModule, samples: list) -> list[torch.Tensor]:
    _, batch, _, _ = device_decode.collate(samples)
    return device_decode.decode_batch(batch, [v.size for v in dm.train_set.views],
                                      torch.device("cpu"))


@pytest.mark.parametrize("tree, recipe, synthetic_augment", [
    ("photo_tree", "asymmetric", "false"), ("photo_tree", "dino", "true"),
    ("big_photo_tree", "dino", "true")])
def test_device_views_are_the_workers_views(request, tree, recipe, synthetic_augment):
    photo_tree = request.getfixturevalue(tree)
    cpu, device = (_data_module(photo_tree, decode, recipe,
                                **{"augment.synthetic_augment": synthetic_augment})
                   for decode in ("cpu", "device"))
    n, sizes = len(cpu.train_set), [v.size for v in cpu.train_set.views]
    reference, samples = [], []
    for i in range(n):
        torch.manual_seed(i)
        reference.append(cpu.train_set[i][1])
        torch.manual_seed(i)  # the same random state: the same crop boxes and flips
        samples.append(device.train_set[i])
    views = _device_views(device, samples)  # the whole batch at once: files of every size
    differences = []
    for i, (_, files, crops, _, _) in enumerate(samples):
        for v, (file, top, left, height, width, flip) in enumerate(crops.tolist()):
            image = _pixels(files[file])
            if device.train_set.views[v].augmented_view and not (
                    synthetic_augment == "false" and samples[i][3][v] != 0):
                # the worker's own view, re-cut from the box the device path drew: identical
                recut = F.resized_crop(image, top, left, height, width, [sizes[v]] * 2,
                                       antialias=True)
                recut = F.horizontal_flip(recut) if flip else recut
                assert torch.equal(recut, reference[i][v])
            differences.append((reference[i][v].float() - views[v][i].float()).abs().mean())
    # the resamplers differ (a box filter vs antialiased bilinear) by a few grey levels at these
    # reductions (at most ~3x, as at 224 px); another crop of the same photo differs by tens
    assert max(differences) < 6 and sum(differences) / len(differences) < 3
    if tree == "big_photo_tree":  # shrunk by the worker in draft mode, as the CPU path does
        assert not any(f.encoded for _, files, _, _, _ in samples for f in files)
        assert all(max(f.height, f.width) <= 1200 for _, files, _, _, _ in samples for f in files)
    torch.manual_seed(n)
    other = _device_views(device, [device.train_set[0]])
    assert (reference[0][0].float() - other[0][0].float()).abs().mean() > 10


def test_jpegs_travel_encoded_and_other_files_as_pixels(photo_tree):
    kinds = {path.relative_to(photo_tree).as_posix(): device_decode.ImageFile.read(path)
             for path in photo_tree.rglob("*.*")}
    assert {path for path, f in kinds.items() if not f.encoded} == {
        "syn/c0/2.jpg", "syn/c1/2.jpg", "syn/c0/3.png", "syn/c1/3.png"}  # CMYK and PNG
    for path, f in kinds.items():
        assert (f.height, f.width) == SIZES[int(path[-5])]
        if not f.encoded:
            expected = F.pil_to_tensor(load_rgb_for(photo_tree / path, None))
            assert torch.equal(f.payload, expected)


def test_collate_packs_files_and_counts_crops_across_the_batch(photo_tree):
    dm = _data_module(photo_tree, "device", "asymmetric")
    samples = [dm.train_set[i] for i in range(3)]
    index, batch, sources, labels = device_decode.collate(samples)
    assert len(batch) == 3 and batch.crops.shape == (3, 2, device_decode.CROP_FIELDS)
    assert len(batch.lengths) == sum(len(s[1]) for s in samples)  # mixdiff: 2 files a sample
    assert batch.crops[:, :, 0].tolist() == [[0, 1], [2, 3], [4, 5]]  # anchor real, partner twin
    assert torch.equal(sources, torch.stack([s[3] for s in samples]))
    assert index.tolist() == [s[0] for s in samples] and labels.tolist() == [s[4] for s in samples]
    pieces = batch.data.split(batch.lengths)
    first = samples[0][1][0]
    assert torch.equal(pieces[0], first.payload.flatten())


def test_plain_views_cut_the_centred_square(photo_tree):
    dm = _data_module(photo_tree, "device", "none")
    views = _device_views(dm, [dm.train_set[i] for i in range(len(dm.train_set))])
    cpu = _data_module(photo_tree, "cpu", "none")
    for i in range(len(dm.train_set)):
        expected = cpu.train_set[i][1][0]  # the batched backend's worker output: uint8
        assert (expected.float() - views[0][i].float()).abs().mean() < 6


def test_an_unreadable_file_is_named(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        device_decode.ImageFile.read(broken)
    with pytest.raises(UnreadableImageError, match="missing.jpg: file not found"):
        device_decode.ImageFile.read(tmp_path / "missing.jpg")


def test_device_decoding_needs_the_batched_backend(tiny_data):
    with pytest.raises(ConfigError, match="data.decode.*augment.backend=batched"):
        load_config(None, tiny_overrides(tiny_data, **{"data.decode": "device",
                                                       "augment.backend": "per_image"}))


@pytest.mark.parametrize("recipe, workers", [("asymmetric", 2), ("dino", 0)])
def test_runs_train_with_device_decoding(tiny_data, tmp_path, recipe, workers):
    """tiny_data: real PNGs (decoded by the workers) and JPEG twins in syn0 (decoded in the
    main process); two workers pass packed batches between processes."""
    settings = {"data.decode": "device", "augment.recipe": recipe, "data.mode": "mixdiff",
                "data.num_workers": workers, **({"method": "dino"} if recipe == "dino" else {})}
    run = pretrain(load_config(None, tiny_overrides(tiny_data, **settings)), tmp_path / "run")
    with open(run / "metrics.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)  # one epoch
    assert math.isfinite(float(row["train/loss"]))


def test_crops_at_an_images_edge_see_the_image_not_its_neighbours_padding():
    """Two images share a canvas (one size bucket); the smaller one's full crop, shrunk and
    enlarged, stays its own colour up to the last row and column."""
    small = torch.full((3, 100, 90), 200, dtype=torch.uint8)
    large = torch.full((3, 120, 120), 50, dtype=torch.uint8)
    assert device_decode.size_buckets([small, large]) == [[0, 1]]
    crops = torch.tensor([[[0, 0, 0, 100, 90, 0], [0, 40, 30, 60, 60, 1]]])  # whole; bottom right
    for size in (40, 160):
        views = device_decode.cut_views([small, large], crops, [size, size])
        assert all((view == 200).all() for view in views)


def test_a_jpeg_the_batched_decode_cannot_read_is_named(photo_tree, tmp_path):
    """A truncated JPEG passes the header check and reaches the device decode in the main
    process; the error names it."""
    data = (photo_tree / "real" / "c0" / "0.jpg").read_bytes()
    broken = tmp_path / "truncated.jpg"
    broken.write_bytes(data[:len(data) // 2])
    files = [device_decode.ImageFile.read(photo_tree / "real" / "c0" / "2.jpg"),
             device_decode.ImageFile.read(broken)]
    assert all(f.encoded for f in files)
    crops = torch.tensor([[[0, 0, 0, 50, 50, 0]], [[1, 0, 0, 50, 50, 0]]])
    sample = [(i, [f], crops[i], torch.tensor([0]), 0) for i, f in enumerate(files)]
    _, batch, _, _ = device_decode.collate(sample)
    with pytest.raises(UnreadableImageError, match="truncated.jpg: .*truncated"):
        device_decode.decode_batch(batch, [32], torch.device("cpu"))


def test_a_jpeg_the_device_refuses_is_decoded_by_the_cpu_and_counted(photo_tree, monkeypatch):
    """nvJPEG refuses some JPEGs that libjpeg reads, and its batched decode then fails the whole
    batch: each file is decoded on its own, a refused one by the CPU, and the run's log counts
    them (at the first, then at every power of ten). Emulated: the device's decoder refuses one
    file's bytes, in a batch and alone."""
    import logging

    files = [device_decode.ImageFile.read(photo_tree / "real" / "c0" / f"{i}.jpg") for i in (0, 2)]
    refused = files[1].payload
    decode_on = device_decode._decode_on

    def refusing(device, jpegs):
        if any(torch.equal(jpeg, refused) for jpeg in jpegs):
            raise RuntimeError("nvjpegDecodeBatchedPhaseOne failed: NVJPEG_STATUS_BAD_JPEG")
        return decode_on(device, jpegs)

    monkeypatch.setattr(device_decode, "_decode_on", refusing)
    monkeypatch.setattr(device_decode, "CPU_FALLBACKS", device_decode.FallbackCount())
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger(device_decode.__name__)
    logger.addHandler(handler)
    crops = torch.tensor([[[0, 0, 0, 50, 50, 0]], [[1, 0, 0, 50, 50, 0]]])
    _, batch, _, _ = device_decode.collate(
        [(i, [f], crops[i], torch.tensor([0]), 0) for i, f in enumerate(files)])
    try:
        for _ in range(10):
            images = device_decode.decode_images(batch, torch.device("cpu"))
    finally:
        logger.removeHandler(handler)
    for file, image in zip(files, images):
        assert torch.equal(image, decode_jpeg(file.payload, mode=ImageReadMode.RGB))
    assert device_decode.CPU_FALLBACKS.files == 10
    assert len(said) == 2 and all("c0/2.jpg: the device's JPEG decoder refused it" in line
                                  for line in said)
    assert "(1 such file(s) so far" in said[0] and "(10 such file(s) so far" in said[1]


def test_canvases_split_at_the_byte_budget_cut_the_same_views(photo_tree, monkeypatch):
    dm = _data_module(photo_tree, "device", "dino")
    samples = [dm.train_set[i] for i in range(len(dm.train_set))]
    whole = _device_views(dm, samples)
    monkeypatch.setattr(device_decode, "CANVAS_BYTES", 1)  # one image per canvas
    _, batch, _, _ = device_decode.collate(samples)
    images = device_decode.decode_images(batch, torch.device("cpu"))
    assert all(len(bucket) == 1 for bucket in device_decode.size_buckets(images))
    split = _device_views(dm, samples)
    assert all(torch.equal(a, b) for a, b in zip(whole, split))


def test_a_jpegs_exif_orientation_is_applied_by_every_reader(tmp_path):
    """A photo stored sideways with an EXIF orientation is read upright: by the CPU decode (at
    full size and in draft mode) and by the device path, which ships it as pixels (nvJPEG does
    not turn it)."""
    import numpy as np
    from PIL import ExifTags

    from mixdiff.data.decode import ViewNeed
    from mixdiff.data.tree import load_rgb

    stored = np.zeros((200, 400, 3), np.uint8)
    stored[:, :200] = 255  # the left half white
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned 90 degrees clockwise: the left on top
    path = tmp_path / "portrait.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    for image in (load_rgb(path), load_rgb_for(path, [ViewNeed(16, None)])):
        pixels = np.asarray(image)
        assert pixels.shape[0] == 2 * pixels.shape[1], pixels.shape  # tall, as shown
        half = pixels.shape[0] // 2
        assert pixels[:half].mean() > 200 and pixels[half:].mean() < 50
    shipped = device_decode.ImageFile.read(path)
    assert not shipped.encoded and (shipped.height, shipped.width) == (400, 200)
    assert shipped.payload[:, :200].float().mean() > 200
