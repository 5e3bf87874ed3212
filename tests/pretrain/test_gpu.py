"""The GPU path (CUDA, bf16 autocast, channels_last, the batched augmentation on the GPU): run
where a GPU is present, skipped elsewhere. `benchmarks/gpu_check.sh` runs these on a lent GPU
machine."""

import csv
import time

import pytest
import torch

from mixdiff.config import load_config
from mixdiff.pretrain.input import device_decode, input_stream
from mixdiff.pretrain.input.batch_augment import BatchAugment
from mixdiff.pretrain.input.views import build_views
from mixdiff.pretrain.train import pretrain

from conftest import tiny_overrides
from test_device_decode import _data_module, photo_tree  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("method, backbone, backend, decode", [
    ("simclr", "resnet18", "batched", "cpu"), ("simclr", "resnet18", "per_image", "cpu"),
    ("barlow_twins", "resnet50", "batched", "cpu"), ("dino", "vit_tiny", "batched", "cpu"),
    ("simclr", "resnet18", "batched", "device"), ("dino", "vit_tiny", "batched", "device")])
def test_bf16_mixdiff_run_on_gpu(tiny_data, tmp_path, method, backbone, backend, decode):
    extra = {"method": method, "model.backbone": backbone, "data.mode": "mixdiff",
             "trainer.accelerator": "gpu", "trainer.precision": "bf16-mixed",
             "data.image_size": 32, "model.patch_size": 8, "trainer.max_epochs": 2,
             "augment.backend": backend, "data.decode": decode, "data.num_workers": 2}
    if method == "dino":
        extra["augment.recipe"] = "dino"
    out = pretrain(load_config(None, tiny_overrides(tiny_data, **extra)), tmp_path / "run")
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(float(r["train/synthetic_fraction"]) == 1.0 for r in rows)
    assert all(torch.isfinite(torch.tensor(float(r["train/loss"]))) for r in rows)


@pytest.mark.parametrize("recipe", ["simclr", "dino"])
def test_batched_augmentation_on_the_gpu_matches_the_cpu(tiny_data, recipe):
    """The same drawn parameters give the same views on either device (kornia's ops on CUDA)."""
    cfg = load_config(None, tiny_overrides(tiny_data, **{
        "augment.recipe": recipe, "method": "dino" if recipe == "dino" else "simclr",
        "data.image_size": 64}))
    views = build_views(cfg)
    augment = BatchAugment(views, synthetic_augment=True)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (32, 3, v.size, v.size), dtype=torch.uint8,
                            generator=generator) for v in views]
    plans = augment.plan(torch.zeros(32, len(views), dtype=torch.long), generator)
    on_cpu = augment.apply(images, plans)
    on_gpu = augment.apply([im.cuda() for im in images], plans)
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert gpu.is_cuda and gpu.dtype == torch.float32
        # all pixels but the rare one at DINO's solarisation threshold, which rounding may flip
        agree = ((gpu.cpu() - cpu).abs() < 1e-3).float().mean().item()
        assert agree > 0.999, agree


def test_device_decoding_on_the_gpu_matches_the_cpu(photo_tree):  # noqa: F811
    """nvJPEG and an fp16 canvas on the GPU cut nearly the views libjpeg-turbo and fp32 cut on
    the CPU (the decoders' IDCTs differ by a grey level here and there)."""
    dm = _data_module(photo_tree, "device", "dino")
    _, batch, _, _ = device_decode.collate([dm.train_set[i] for i in range(len(dm.train_set))])
    sizes = [v.size for v in dm.train_set.views]
    on_cpu = device_decode.decode_batch(batch, sizes, torch.device("cpu"))
    on_gpu = device_decode.decode_batch(batch, sizes, torch.device("cuda"))
    for a, b in zip(on_cpu, on_gpu):
        assert b.is_cuda and b.dtype == torch.uint8
        assert (a.float() - b.cpu().float()).abs().mean() < 2


def test_large_reductions_on_the_gpu_match_the_cpu():
    """A 2000 px image cut to 32 px: ~63 x 63 samples summed per output pixel (fp32 canvas)."""
    image = torch.randint(0, 256, (3, 2000, 2000), dtype=torch.uint8)
    crops = torch.tensor([[[0, 0, 0, 2000, 2000, 0], [0, 100, 300, 1500, 1200, 1]]])
    on_cpu = device_decode.cut_views([image], crops, [32, 32])
    on_gpu = device_decode.cut_views([image.cuda()], crops, [32, 32])
    for a, b in zip(on_cpu, on_gpu):
        assert (a.float() - b.cpu().float()).abs().max() <= 1


@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_the_input_stream_runs_beside_the_step(photo_tree, decode):  # noqa: F811
    """The batch's device half (copy or decode, crops, photometric ops) finishes while the step
    queued before it still runs, and gives what it gives on the step's own stream."""
    dm = _data_module(photo_tree, decode, "asymmetric")
    batch = next(iter(dm.train_dataloader()))
    cuda = torch.device("cuda", torch.cuda.current_device())
    dm.input_stream = False
    expected = [view.cpu() for view in dm.prepare_batch(batch, cuda)[1]]
    dm.input_stream = True
    dm.prepare_batch(batch, cuda)  # the side stream's memory and workspaces, allocated once
    torch.cuda.synchronize()
    torch.cuda._sleep(1_000_000_000)  # the step: ~0.5 s of work queued on its stream
    views = dm.prepare_batch(batch, cuda)[1]
    with torch.cuda.stream(input_stream._side_stream(cuda)):
        got = [view.cpu() for view in views]  # waits for the input stream alone
    assert not torch.cuda.current_stream().query()  # the step is still running
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours, theirs)


def test_the_step_waits_for_the_input_stream():
    """What the step's stream queues after the transfer starts only once the input work is
    done, however long that takes."""
    cuda = torch.device("cuda", torch.cuda.current_device())
    input_stream.beside_the_step(cuda, lambda: torch.ones(4, device=cuda))  # stream and memory

    def slow_input() -> torch.Tensor:
        torch.cuda._sleep(1_000_000_000)  # ~0.5 s
        return torch.ones(4, device=cuda)

    torch.cuda.synchronize()
    ones = input_stream.beside_the_step(cuda, slow_input)
    step_starts = torch.cuda.Event()
    step_starts.record()  # on the step's stream, idle but for the wait
    time.sleep(0.1)
    assert not step_starts.query()
    assert ones.sum().item() == 4
