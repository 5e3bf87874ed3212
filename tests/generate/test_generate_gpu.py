"""Generation on a GPU, as `--device auto` runs it there: fp16 and a torch.compile'd denoiser. Run
where a GPU is present (`benchmarks/gpu_check.sh generate`), skipped elsewhere; the CPU tests
(test_generate.py) pin fp32 on the CPU."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_pipelines
from conftest import make_tree
from mixdiff.generate.embedded import GeneratorTraining, train_generator
from mixdiff.generate.runner import generate
from mixdiff.generate.settings import GenerateSettings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_fp16_compiled_generation_with_a_partial_last_batch_matches_the_cpu(tmp_path):
    """6 images in batches of 4: the compiled denoiser sees a batch of 4, then one of 2 (a
    recompile, or a dynamic shape); every image is the CPU's fp32 one up to fp16's rounding."""
    real = make_tree(tmp_path / "real", per_class=2)
    model = tiny_pipelines.sdedit_ddpm(tmp_path / "model")
    on_gpu = GenerateSettings(generator="sdedit", model=str(model), steps=4, batch_size=4)
    resolved = on_gpu.resolved()
    assert (resolved.device, resolved.dtype, resolved.compile) == ("cuda:0", "fp16", True)
    summary = generate(real, tmp_path / "gpu", on_gpu, show_progress=False)
    assert (summary.written, summary.failed) == (6, [])
    generate(real, tmp_path / "cpu", replace(on_gpu, device="cpu"), show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "gpu" / "manifest.jsonl").read_text()
            .splitlines()]
    assert {row["dtype"] for row in rows} == {"fp16"}
    for row in rows:
        difference = np.abs(_pixels(tmp_path / "gpu" / row["path"]) -
                            _pixels(tmp_path / "cpu" / row["path"]))
        assert difference.mean() < 2 and difference.max() <= 16, (row["path"], difference.max())


def test_the_embedded_generator_trains_on_the_gpu(tmp_path):
    real = make_tree(tmp_path / "real", per_class=2)
    cfg = GeneratorTraining(resolution=16, block_out_channels=(8, 16), steps=3, batch_size=4,
                            warmup_steps=1, num_workers=0)
    record = train_generator(real, tmp_path / "ddpm", cfg, show_progress=False)
    assert record["device"] == "cuda" and np.isfinite(record["final_loss_mean_last_200"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_torchrun_shards_generation_over_two_gpus(tmp_path):
    """Each torchrun rank generates its shard on its own GPU (cuda:LOCAL_RANK); the ranks'
    manifests merge into one."""
    import subprocess
    import sys

    real = make_tree(tmp_path / "real", per_class=2)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "mixdiff.cli", "generate", "--real", str(real), "--out", str(out),
         "--generator", "sdedit", "--steps", "2", "--no-compile"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (out / "manifests").iterdir()) == [
        "shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(row["status"] == "ok" for row in rows)
