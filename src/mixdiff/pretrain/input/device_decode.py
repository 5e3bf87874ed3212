"""`data.decode=device`: the training device decodes the batch's JPEGs and cuts its crops.

With `data.decode=cpu` a loader worker decodes every image and crops its views; at 224 px the
decode is most of a worker's time. With `device`, a worker only reads each file's bytes, parses
its header for the size, and draws each view's crop box and flip, exactly as `ViewSpec.crop` would
(the same torchvision `make_params` calls, in the same order, from the worker's random state). Once
the batch reaches the main process (`transfer_batch_to_device`), the JPEGs are decoded together
(`torchvision.io.decode_jpeg` on a list: nvJPEG's batched decoder on CUDA, libjpeg-turbo on the
CPU) and each group of same-size views is cut and resized by `torchvision.ops.roi_align`, one call
per bucket of similar-size images. The views then go on as uint8 crops to the batched photometric
ops (`mixdiff.pretrain.input.batch_augment`).

The worker still decodes what the device should not: a JPEG so large that JPEG draft mode may
shrink it (as the CPU path would: `mixdiff.data.decode`; only photos of several megapixels at
224 px), which it ships at the reduced size, so the device never holds a full 12 MP photo and
the crop boxes are the CPU path's; a file nvJPEG cannot take (not a JPEG; a CMYK or YCCK
JPEG); and a JPEG whose EXIF orientation turns it (nvJPEG would not). Those travel as pixels
and are cut the same way. A JPEG the device's decoder refuses all the same is decoded by the
CPU, and the run's log counts them (`decode_jpegs`).

Resampling: roi_align with an adaptive sampling ratio averages ceil(box side / output side)
bilinear samples per output pixel along each axis: a box filter when a crop shrinks (as OpenCV's
INTER_AREA, which FFCV, the MixDiff authors' loader, uses) and plain bilinear when it grows. The
CPU path's antialiased bilinear (tent) filter is softer: at the reductions of the 224 px recipes
(at most about 3x) the two differ by 1-4 grey levels on average on photos; the crop boxes and
flips are the same (tests/test_device_decode.py).

On CUDA the decode first waits for the work already queued on the current stream: nvJPEG's
hardware decoder would otherwise overwrite memory that work still reads (`_decode_on`). In
training that stream is the input stream beside the training step (`mixdiff.pretrain.input.input_stream`),
so the wait is for the last batch's input work, not for the step, which runs on meanwhile.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align
from torchvision.transforms import v2

from mixdiff.data.decode import ViewNeed, draft_request, is_rotated, load_rgb_for, naming_errors
from mixdiff.pretrain.input.input_stream import to_device
from mixdiff.errors import UnreadableImageError

log = logging.getLogger(__name__)

DEVICE_JPEG_MODES = ("RGB", "L")  # what the device decoder takes; other JPEGs are decoded on the CPU
_to_tensor = v2.PILToTensor()
BUCKET = 128  # px: images whose sides round up to the same multiple of this share a canvas
CANVAS_BYTES = 1 << 30  # at most this much canvas at once (more images: more roi_align calls)
# torchvision >= 0.29 warns on every decode that TorchCodec will take its decoders over
_DEPRECATED_DECODERS = "The image decoding and encoding capabilities of TorchVision are deprecated"


@dataclass(frozen=True)
class ImageFile:
    """One image as a worker ships it: its JPEG bytes (1-D uint8) or, where the device should not
    decode it, its decoded pixels (3, H, W)."""

    path: str
    payload: Tensor
    encoded: bool
    height: int
    width: int

    @classmethod
    def read(cls, path: str | Path, needs: Sequence[ViewNeed] | None = None) -> "ImageFile":
        """The file's bytes, if it is a JPEG nvJPEG takes that its views (`needs`) do not allow
        to shrink in JPEG draft mode; else its pixels, decoded here as the CPU path would."""
        with naming_errors(path):
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as image:  # parses the header only
                width, height = image.size
                # nvJPEG ignores torchvision's apply_exif_orientation: a turned JPEG is decoded here
                if image.format == "JPEG" and image.mode in DEVICE_JPEG_MODES and not (
                        needs and draft_request(width, height, needs)) and not is_rotated(image):
                    return cls(str(path), torch.frombuffer(bytearray(data), dtype=torch.uint8),
                               True, height, width)
        pixels = _to_tensor(load_rgb_for(path, needs))
        return cls(str(path), pixels, False, *pixels.shape[-2:])


# a crop, as (file, top, left, height, width, flip); a sample's file indices count its own files
CROP_FIELDS = 6


def draw_crop(crop: v2.Compose, height: int, width: int) -> tuple[int, int, int, int, int]:
    """(top, left, height, width, flip) of one view, drawn as `crop` (ViewSpec.crop: a random-
    resized crop and a flip, or a plain view's resize and centre crop) would draw it on a
    height x width image, consuming the same random numbers."""
    first = crop.transforms[0]
    if isinstance(first, v2.RandomResizedCrop):
        box = first.make_params([torch.empty((0, height, width))])
        flip = bool(torch.rand(1) < crop.transforms[1].p)  # RandomHorizontalFlip's own test
        return box["top"], box["left"], box["height"], box["width"], flip
    side = min(height, width)  # a plain view: the centred square the resize and crop keep
    return (height - side) // 2, (width - side) // 2, side, side, False


@dataclass
class EncodedBatch:
    """A collated batch's images before decoding, packed in one flat uint8 tensor (one buffer to
    pass between processes, not one per file): file i is `data`'s i-th piece of `lengths[i]`
    bytes, JPEG bytes when `encoded[i]`, else pixels of `shapes[i]`. crops[b, v] is sample b's
    view v: (file i, top, left, height, width, flip)."""

    data: Tensor
    lengths: list[int]
    encoded: list[bool]
    shapes: list[tuple[int, int]]  # (height, width)
    crops: Tensor  # (batch, views, CROP_FIELDS), int64
    paths: list[str]  # to name a file the batched decode fails on

    def __len__(self) -> int:
        return len(self.crops)

    def pin_memory(self) -> "EncodedBatch":
        """The DataLoader's pinning thread calls this: pixels then go to the GPU without the host
        waiting (`input_stream.to_device`)."""
        return replace(self, data=self.data.pin_memory())


def collate(samples: Sequence[tuple]) -> tuple:
    """DataLoader collate for `(index, files, crops, sources, label)` samples: the files of all
    the samples packed in one EncodedBatch, each crop's file index counted across the batch."""
    files: list[ImageFile] = []
    crops = []
    for _, sample_files, sample_crops, _, _ in samples:
        shifted = sample_crops.clone()
        shifted[:, 0] += len(files)
        files.extend(sample_files)
        crops.append(shifted)
    batch = EncodedBatch(torch.cat([f.payload.flatten() for f in files]),
                         [f.payload.numel() for f in files], [f.encoded for f in files],
                         [(f.height, f.width) for f in files], torch.stack(crops),
                         [f.path for f in files])
    index = torch.tensor([s[0] for s in samples])
    sources = torch.stack([s[3] for s in samples])
    labels = torch.tensor([s[4] for s in samples])
    return index, batch, sources, labels


def decode_images(batch: EncodedBatch, device: torch.device) -> list[Tensor]:
    """Every file of the batch as uint8 (3, H, W) on `device`; the JPEGs in one batched decode."""
    pieces = batch.data.split(batch.lengths)
    images: list[Tensor | None] = [None] * len(pieces)
    jpegs = [i for i, encoded in enumerate(batch.encoded) if encoded]
    if jpegs:
        decoded = decode_jpegs([(batch.paths[i], pieces[i]) for i in jpegs], device)
        for i, image in zip(jpegs, decoded):
            images[i] = image
    for i, encoded in enumerate(batch.encoded):
        if not encoded:
            images[i] = to_device(pieces[i].view(3, *batch.shapes[i]), device)
    return images  # type: ignore[return-value]


def decode_jpegs(files: list[tuple[str, Tensor]], device: torch.device) -> list[Tensor]:
    """The JPEGs of `files` (path, bytes) decoded on `device` in one batched call. If the batch
    fails, each file on its own: on the device, else on the CPU (a file nvJPEG refuses that
    libjpeg reads, counted in the run's log: `CPU_FALLBACKS`); a file neither decodes is an
    UnreadableImageError that names it (a batched decode's error does not say which file)."""
    try:
        return _decode_on(device, [data for _, data in files])
    except RuntimeError:
        return [_decode_one(path, data, device) for path, data in files]


def _decode_one(path: str, data: Tensor, device: torch.device) -> Tensor:
    try:
        return _decode_on(device, [data])[0]
    except RuntimeError:
        pass
    try:
        image = _libjpeg(data)
    except RuntimeError as exc:
        raise UnreadableImageError(path, str(exc).splitlines()[-1].split(", ")[-1]) from None
    CPU_FALLBACKS.add(path)
    return to_device(image, device)


def _decode_on(device: torch.device, jpegs: list[Tensor]) -> list[Tensor]:
    """The device's decoder: nvJPEG's batched decoder on CUDA, libjpeg-turbo on the CPU."""
    if device.type == "cuda":
        # nvJPEG's hardware decoder writes its outputs without waiting for the work queued on
        # the current stream, into blocks the caching allocator may have freed while queued
        # kernels still read them: silent corruption. Wait for that work first
        # (pytorch/vision#9606, meta-pytorch/torchcodec#1634 do the same). In training the
        # current stream is the input stream (`input_stream`), whose queue holds at most the
        # last batch's input work, not the training step.
        torch.cuda.current_stream(device).synchronize()
    return _torchvision_decode(jpegs, device)


def _libjpeg(data: Tensor) -> Tensor:
    return _torchvision_decode([data], torch.device("cpu"))[0]


def _torchvision_decode(jpegs: list[Tensor], device: torch.device) -> list[Tensor]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _DEPRECATED_DECODERS, DeprecationWarning)
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)


@dataclass
class FallbackCount:
    """The JPEGs the training device refused and the CPU decoded, in this process: said in the
    run's log at the first and then at every power of ten, so a data set full of them is known
    without a line per batch."""

    files: int = 0
    _next_warning: int = 1

    def add(self, path: str) -> None:
        self.files += 1
        if self.files == self._next_warning:
            self._next_warning *= 10
            log.warning("%s: the device's JPEG decoder refused it, so the CPU decoded it (%d "
                        "such file(s) so far in this run; each costs a CPU decode)", path,
                        self.files)


CPU_FALLBACKS = FallbackCount()


def canvas_of(images: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """The images in one (N, 3, H + 1, W + 1) tensor for roi_align, each at the top left; the
    row and column past each image repeat its edge, so samples within half a pixel of the edge
    (roi_align reads up to there) see the image, not the padding."""
    height = max(image.shape[1] for image in images) + 1
    width = max(image.shape[2] for image in images) + 1
    canvas = torch.zeros(len(images), 3, height, width, dtype=dtype, device=images[0].device)
    for i, image in enumerate(images):
        h, w = image.shape[1:]
        canvas[i, :, :h, :w] = image
        canvas[i, :, h, :w] = image[:, h - 1]
        canvas[i, :, :h + 1, w] = canvas[i, :, :h + 1, w - 1]
    return canvas


def size_buckets(images: Sequence[Tensor]) -> list[list[int]]:
    """The images grouped by size, each side rounded up to BUCKET px, and each group cut into
    canvases of at most CANVAS_BYTES: little padding is wasted, and an unusually large image
    does not inflate everyone's canvas."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        h, w = image.shape[1:]
        groups.setdefault((-(-h // BUCKET), -(-w // BUCKET)), []).append(i)
    buckets = []
    for (h, w), members in groups.items():
        per_image = 3 * (h * BUCKET + 1) * (w * BUCKET + 1) * 4  # fp32, at the rounded size
        step = max(1, CANVAS_BYTES // per_image)
        buckets += [members[start:start + step] for start in range(0, len(members), step)]
    return buckets


def cut_views(images: Sequence[Tensor], crops: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """The uint8 views (batch, 3, S, S), view v at side sizes[v], cut from the decoded images by
    `crops` (on the CPU): one roi_align call per bucket of images and size of view. The canvas is
    fp32: roi_align sums its samples in the canvas's dtype, which fp16 overflows on large
    reductions."""
    device, batch = images[0].device, len(crops)
    groups = {size: [v for v, s in enumerate(sizes) if s == size] for size in sizes}
    # per view size, its views' crops view after view, and the uint8 output they fill
    chosen = {size: crops[:, group].transpose(0, 1).reshape(-1, CROP_FIELDS)
              for size, group in groups.items()}
    stacked = {size: torch.empty(len(group) * batch, 3, size, size, dtype=torch.uint8,
                                 device=device) for size, group in groups.items()}
    for bucket in size_buckets(images):
        canvas = canvas_of([images[i] for i in bucket], torch.float32)
        local = torch.full((len(images),), -1, dtype=torch.long)
        local[bucket] = torch.arange(len(bucket))
        for size, rows_crops in chosen.items():
            rows = (local[rows_crops[:, 0]] >= 0).nonzero().flatten()
            if not len(rows):
                continue
            file, top, left, height, width, flip = rows_crops[rows].unbind(1)
            boxes = torch.stack([local[file], left, top, left + width, top + height], 1)
            out = roi_align(canvas, to_device(boxes.float(), device), output_size=size,
                            spatial_scale=1.0, sampling_ratio=-1, aligned=True)
            flipped = to_device(flip.bool(), device)[:, None, None, None]
            out = torch.where(flipped, out.flip(-1), out).round_().clamp_(0, 255)
            stacked[size][to_device(rows, device)] = out.to(torch.uint8)
    views: list[Tensor | None] = [None] * len(sizes)
    for size, group in groups.items():
        for v, chunk in zip(group, stacked[size].chunk(len(group))):
            views[v] = chunk
    return views  # type: ignore[return-value]


def decode_batch(batch: EncodedBatch, sizes: Sequence[int], device: torch.device) -> list[Tensor]:
    """Decode and cut a batch's views on `device`: uint8 (batch, 3, S, S) per view."""
    return cut_views(decode_images(batch, device), batch.crops, sizes)
