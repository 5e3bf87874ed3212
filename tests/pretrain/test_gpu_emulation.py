"""Rules that only a GPU enforces, checked on the CPU by emulating the enforcement: the device of
what is reduced across ranks (NCCL), every precision the config accepts, a GPU machine's resolved
hardware, DINO's teacher under DDP. The GPU itself runs `tests/pretrain/test_gpu.py` and the
stages of `benchmarks/gpu_check.sh` (README.md, "GPU check", lists which proves what)."""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor

from mixdiff.config import METHOD_NAMES, PRECISIONS, load_config
from mixdiff.errors import ConfigError
from mixdiff.pretrain.methods import SSLMethod
from mixdiff.pretrain.train import pretrain
from mixdiff.runs import Metric

from conftest import tiny_overrides

METHOD_SETTINGS = {"simclr": {}, "barlow_twins": {}, "dino": {"augment.recipe": "dino"}}


def _rows(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _with_default_device(device: str, method):
    """`method`, run with `device` as the default device (where tensors made without one land)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with torch.device(device):
            return method(self, *args, **kwargs)

    return run


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_values_reduced_across_ranks_live_on_the_module_s_device(tiny_data, tmp_path, monkeypatch,
                                                                 method):
    """NCCL, Lightning's backend on CUDA, reduces CUDA tensors only ("No backend type associated
    with device type cpu"), and Lightning reduces a value logged with sync_dist=True on the
    value's own device (`_ResultCollection.log` moves its accumulator to `value.device`): one made
    on the default device, the CPU, crashes multi-GPU training at the end of its first epoch.
    Emulated on the CPU: while the module's training hooks run, the default device is `meta`,
    not the module's (as the CPU is not a GPU module's), and a value logged for reduction that is
    not on the module's device is refused, as NCCL refuses it."""
    for hook in ("on_train_batch_start", "training_step", "on_train_batch_end"):
        monkeypatch.setattr(SSLMethod, hook, _with_default_device("meta", getattr(SSLMethod, hook)))
    reduced = []
    log = SSLMethod.log

    def log_for_nccl(self, name, value, *args, sync_dist: bool = False, **kwargs):
        if sync_dist and isinstance(value, Tensor):
            if value.device != self.device:
                raise RuntimeError(f"{name}: No backend type associated with device type "
                                   f"{value.device.type}")
            reduced.append(name)
        with torch.device(self.device):  # Lightning's own bookkeeping: not the module's doing
            return log(self, name, value, *args, sync_dist=sync_dist, **kwargs)

    monkeypatch.setattr(SSLMethod, "log", log_for_nccl)
    extra = {"method": method, "data.mode": "mixdiff", **METHOD_SETTINGS[method]}
    run = pretrain(load_config(None, tiny_overrides(tiny_data, **extra)), tmp_path / "run")
    assert {Metric.LR, Metric.TRAIN_LOSS, Metric.SYNTHETIC_FRACTION} <= set(reduced)
    (row,) = _rows(run)
    assert float(row[Metric.LR]) > 0 and math.isfinite(float(row[Metric.TRAIN_LOSS]))


@pytest.mark.parametrize("gpus, bf16", [(1, True), (2, True), (2, False)])
def test_a_gpu_machine_s_hardware_is_decided_before_the_run(tiny_data, monkeypatch, gpus, bf16):
    """On GPUs, `devices: auto` takes every GPU, BatchNorm is synchronised across several (as
    the authors' code does), and `precision: auto` is bf16-mixed where the GPU has bf16, else
    16-mixed (fp16 with a gradient scaler). Emulated: CUDA says how many GPUs there are."""
    from mixdiff.pretrain.train import resolve_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    cfg = resolve_hardware(load_config(None, tiny_overrides(tiny_data, **{
        "trainer.accelerator": "gpu", "trainer.devices": "auto", "trainer.precision": "auto"})))
    t = cfg.trainer
    assert (t.devices, t.sync_batchnorm) == (gpus, gpus > 1)
    assert t.precision == ("bf16-mixed" if bf16 else "16-mixed")


# what the CPU cannot train, with the words its refusal must say
REFUSED = {"bf16-true": "use trainer.precision=bf16-mixed"}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_precision_trains_a_step_or_is_refused_before_any_work(tiny_data, tmp_path, method,
                                                                     precision):
    """One optimiser step (a batch of 8 of the 15 training images, 8 px) and the online
    evaluation, or one line that names the key, says why and what to use, before the run folder
    exists."""
    extra = {"method": method, "trainer.precision": precision, "trainer.batch_size": 8,
             "data.image_size": 8, "augment.local_crops_real": 0,
             "augment.local_crops_synthetic": 0, **METHOD_SETTINGS[method]}
    cfg = load_config(None, tiny_overrides(tiny_data, **extra))
    if precision in REFUSED:
        with pytest.raises(ConfigError) as refusal:
            pretrain(cfg, tmp_path / "run")
        message = str(refusal.value)
        assert f"`trainer.precision` = {precision!r}" in message and REFUSED[precision] in message
        assert len(message.splitlines()) == 1
        assert not (tmp_path / "run").exists()
        return
    (row,) = _rows(pretrain(cfg, tmp_path / "run"))
    assert row["step"] == "1"
    for metric in (Metric.TRAIN_LOSS, Metric.TRAIN_PROBE_LOSS, Metric.PROBE_VAL_LOSS):
        assert math.isfinite(float(row[metric])), (metric, row)


# --- DINO's teacher under DDP: two CPU processes over gloo, launched as torchrun launches -------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digests(module, prefixes: tuple[str, ...]) -> dict[str, str]:
    """sha256 of each parameter (and DINO's centre) under `prefixes`: bitwise equality."""
    state = dict(module.named_parameters())
    state["criterion.center"] = module.criterion.center
    return {name: hashlib.sha256(tensor.detach().cpu().numpy().tobytes()).hexdigest()
            for name, tensor in state.items() if name.startswith(prefixes)}


def _torchrun_rank(rank: int, port: int, overrides: list[str], out: str, states) -> None:
    """One rank of a 2-process run as torchrun starts it (the environment names the rank, and
    Lightning joins it without starting processes of its own)."""
    from mixdiff.pretrain.methods import DINO

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    kept = {}
    DINO.on_train_start = lambda module: kept.update(start=_digests(module, ("teacher_",)))
    DINO.on_train_end = lambda module: kept.update(
        end=_digests(module, ("teacher_", "backbone.", "head.", "criterion.")))
    pretrain(load_config(None, overrides), out)
    states[rank] = kept


@pytest.mark.slow  # two processes, each importing torch and Lightning
def test_dino_s_teacher_stays_the_same_on_every_rank_under_ddp(tiny_data, tmp_path):
    """Each rank updates its teacher by EMA from its own copy of the student, which DDP keeps
    equal across ranks (the same averaged gradients, the same step), at a momentum from the
    global step; DINO's centre is all-reduced. So the teachers stay bitwise equal on every rank,
    with NCCL as with gloo (what NCCL adds, CUDA tensors only, is the test above)."""
    overrides = tiny_overrides(tiny_data, **{**METHOD_SETTINGS["dino"], "method": "dino",
                                             "data.mode": "mixdiff", "trainer.devices": 2,
                                             "trainer.strategy": "ddp"})
    states = mp.Manager().dict()
    mp.spawn(_torchrun_rank, args=(_free_port(), overrides, str(tmp_path / "run"), states),
             nprocs=2, join=True)
    first, second = states[0], states[1]
    assert first["end"] == second["end"]  # student, heads, teacher and centre: bit for bit
    moved = [name for name, digest in first["start"].items() if first["end"][name] != digest]
    assert moved and all(name.startswith("teacher_") for name in moved)  # the EMA ran
    (row,) = _rows(tmp_path / "run")
    assert math.isfinite(float(row[Metric.TRAIN_LOSS]))
