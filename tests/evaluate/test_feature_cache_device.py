"""The feature cache keeps each device's features apart: a GPU encodes under bf16 autocast, the
CPU in fp32. Emulated on the CPU: an encoder that says it is on CUDA (`Encoder.device`, which
decides the autocast, the channels_last and the result's settings); and, where there is a GPU,
the real thing."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from conftest import make_tree, tiny_overrides
from mixdiff.config import load_config, to_yaml
from mixdiff.evaluate.features import Encoder, ImageSet
from mixdiff.evaluate.options import EncodeOptions


def _on(encoder: Encoder, device: str) -> Encoder:
    moved = copy.copy(encoder)
    moved.device = torch.device(device)
    return moved


def test_a_gpu_encoder_never_returns_the_cpu_s_cached_features(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config(None, tiny_overrides(tiny_data))))
    images = ImageSet.from_tree(make_tree(tmp_path / "set" / "test", 1))
    cpu = Encoder.pixels(run, device="cpu")  # the run's evaluation transform, no checkpoint
    gpu, other_gpu = _on(cpu, "cuda:0"), _on(cpu, "cuda:1")
    assert cpu.cache_key(images) != gpu.cache_key(images)
    assert gpu.cache_key(images) == other_gpu.cache_key(images)  # the same kind of device
    assert (cpu.settings()["precision"], gpu.settings()["precision"]) == ("fp32",
                                                                           "bf16 autocast")

    on_cpu = cpu.encode(images, options=EncodeOptions(num_workers=0, show_progress=False))
    encoded_on_gpu = torch.full_like(on_cpu, 7.0)  # what the GPU's own encoding gives
    monkeypatch.setattr(Encoder, "_encode", lambda self, *args: encoded_on_gpu)
    assert torch.equal(gpu.encode(images), encoded_on_gpu)  # encoded anew, not the CPU's cache
    assert torch.equal(cpu.encode(images), on_cpu)  # and the CPU's cache is the CPU's still


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_encodes_in_bf16_what_the_cpu_encodes_in_fp32(eval_runs, tmp_path):
    """On a GPU the backbone runs channels_last under bf16 autocast: the same features to bf16's
    precision, cached beside the CPU's, not in their place."""
    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run, ignore=shutil.ignore_patterns("eval", "cache"))
    images = ImageSet.from_tree(make_tree(tmp_path / "set" / "test", 2, seed=5))
    options = EncodeOptions(num_workers=0, show_progress=False)
    on_cpu = Encoder.from_run(run, device="cpu").encode(images, options=options)
    gpu = Encoder.from_run(run, device="cuda")
    on_gpu = gpu.encode(images, options=options)
    assert gpu.channels_last and gpu.settings()["precision"] == "bf16 autocast"
    assert torch.nn.functional.cosine_similarity(on_cpu, on_gpu).min() > 0.99
    assert len(list((run / "cache" / "features").glob("*.pt"))) == 2
