"""The GPU path (CUDA, bf16 autocast, channels_last, the batched augmentation on the GPU, every
precision, SyncBatchNorm, nvJPEG; two GPUs where there are two): run where a GPU is present,
skipped elsewhere. `benchmarks/gpu_check.sh` runs these on a lent GPU machine; what the CPU can
check of the same rules is in test_gpu_emulation.py."""

import csv
import math
import time

import pytest
import torch

from mixdiff.config import load_config
from mixdiff.errors import ConfigError, UnreadableImageError
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


def test_sync_batchnorm_with_bf16_and_channels_last(tmp_path):
    """A multi-GPU run synchronises BatchNorm (on by default on several GPUs) in a ResNet whose
    activations are bf16 (autocast) and channels_last. On one GPU, SyncBatchNorm's own function
    through a one-rank NCCL group (the module skips the sync with one rank): its output,
    gradient and running statistics are BatchNorm's in fp32, to bf16's precision."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.modules._functions import SyncBatchNorm as SyncFunction

    cuda = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1, device_id=cuda)
    try:
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(16, 32, 3, padding=1).to(cuda, memory_format=torch.channels_last)
        images = torch.randn(8, 16, 12, 12, device=cuda).contiguous(
            memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            activation = conv(images).detach()
        assert activation.dtype == torch.bfloat16
        assert activation.is_contiguous(memory_format=torch.channels_last)
        synced, plain = torch.nn.BatchNorm2d(32).to(cuda), torch.nn.BatchNorm2d(32).to(cuda)
        x = activation.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = SyncFunction.apply(x, synced.weight, synced.bias, synced.running_mean,
                                     synced.running_var, synced.eps, synced.momentum,
                                     dist.group.WORLD, 1)
        x32 = activation.float().requires_grad_()
        out32 = F.batch_norm(x32, plain.running_mean, plain.running_var, plain.weight,
                             plain.bias, True, plain.momentum, plain.eps)
        upstream = torch.randn_like(out32)
        (out.float() * upstream).sum().backward()
        (out32 * upstream).sum().backward()
        torch.testing.assert_close(out.float(), out32, atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(x.grad.float(), x32.grad, atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(synced.running_mean, plain.running_mean, atol=1e-3, rtol=1e-2)
        torch.testing.assert_close(synced.running_var, plain.running_var, atol=1e-3, rtol=1e-2)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "64-true", "bf16-true"])
@pytest.mark.parametrize("method", ["simclr", "barlow_twins", "dino"])
def test_each_precision_on_the_gpu(tiny_data, tmp_path, method, precision):
    """One epoch of each method in mixdiff mode at each precision (ResNet-18, channels_last), or
    bf16-true's one-line refusal. Only a GPU runs 16-mixed as fp16 with a gradient scaler (the
    CPU swaps it for bf16): the scaler's state is in the checkpoint."""
    extra = {"method": method, "data.mode": "mixdiff", "trainer.accelerator": "gpu",
             "trainer.precision": precision, "data.num_workers": 2,
             **({"augment.recipe": "dino"} if method == "dino" else {})}
    cfg = load_config(None, tiny_overrides(tiny_data, **extra))
    if precision == "bf16-true":
        with pytest.raises(ConfigError, match=r"`trainer.precision` = 'bf16-true': .* use "
                                              r"trainer.precision=bf16-mixed"):
            pretrain(cfg, tmp_path / "run")
        assert not (tmp_path / "run").exists()
        return
    run = pretrain(cfg, tmp_path / "run")
    with open(run / "metrics.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    for metric in ("train/loss", "online_probe/val_loss"):
        assert math.isfinite(float(row[metric])), (metric, row)
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    if precision == "16-mixed":
        assert saved["MixedPrecision"]["scale"] > 0  # fp16 ran with its gradient scaler


def test_a_batch_nvjpeg_fails_is_decoded_file_by_file(photo_tree, tmp_path):  # noqa: F811
    """A file nvJPEG cannot parse fails its batched decode: each file is then decoded on its own
    and the bad one is named; nvJPEG decodes the next batch as before. A progressive JPEG decodes
    too, by nvJPEG or (refused) by the CPU: the line printed says which."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    good = photo_tree / "real" / "c0" / "0.jpg"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    progressive = tmp_path / "progressive.jpg"
    Image.open(good).save(progressive, progressive=True, quality=95)

    def files(*paths):
        return [(str(p), torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8))
                for p in paths]

    cuda = torch.device("cuda", torch.cuda.current_device())
    with pytest.raises(UnreadableImageError, match="bad.jpg"):
        device_decode.decode_jpegs(files(good, bad), cuda)
    refused_before = device_decode.CPU_FALLBACKS.files
    decoded = device_decode.decode_jpegs(files(good, progressive, good), cuda)
    print(f"progressive JPEG decoded by "
          f"{'the CPU' if device_decode.CPU_FALLBACKS.files > refused_before else 'nvJPEG'}")
    for image, (_, data) in zip(decoded, files(good, progressive, good)):
        on_cpu = decode_jpeg(data, mode=ImageReadMode.RGB)
        assert image.is_cuda and (image.cpu().float() - on_cpu.float()).abs().mean() < 2


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


@two_gpus
@pytest.mark.parametrize("method", ["simclr", "barlow_twins", "dino"])
def test_a_two_gpu_mixdiff_run_killed_and_resumed(tiny_data, tmp_path, method):
    """A real trainer.devices=2 run (DDP over NCCL, BatchNorm synchronised, precision auto,
    channels_last) of 2 epochs in mixdiff mode: killed, both processes, once its first epoch is
    saved, then resumed by the same command to the end."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import make_tree
    from mixdiff.runs import RunDir

    real = make_tree(tmp_path / "real", per_class=40)
    syn = make_tree(tmp_path / "syn", per_class=40, ext=".jpg", seed=1)
    run = tmp_path / "run"
    extra = {"method": method, "data.real": real, "data.synthetic": f"[{syn}]",
             "data.mode": "mixdiff", "data.val_fraction": 0.1, "data.num_workers": 2,
             "trainer.accelerator": "gpu", "trainer.devices": 2, "trainer.strategy": "ddp",
             "trainer.precision": "auto", "trainer.max_epochs": 2,
             "trainer.limit_train_batches": 1.0,
             **({"augment.recipe": "dino"} if method == "dino" else {})}
    command = [sys.executable, "-m", "mixdiff.cli", "pretrain",
               *tiny_overrides(tiny_data, **extra), "--out", str(run)]
    with open(tmp_path / "killed.log", "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its rank 1 in its process group
        deadline = time.monotonic() + 300
        while not ((run / "metrics.csv").exists() and (run / "checkpoints" / "last.ckpt").exists()):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no epoch was saved in time"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with open(run / "metrics.csv", newline="") as handle:
        first = list(csv.DictReader(handle))
    assert [r["epoch"] for r in first] == ["0"], "the run ended before it could be killed"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout + resumed.stderr
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1"] and rows[0] == first[0]
    assert all(math.isfinite(float(r["train/loss"])) and r["online_knn/val_top1"] for r in rows)
    saved = RunDir(run).load_config().trainer
    assert (saved.devices, saved.sync_batchnorm) == (2, True)
