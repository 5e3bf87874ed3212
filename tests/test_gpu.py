"""The GPU path (CUDA, bf16 autocast, channels_last): run where a GPU is present, skipped elsewhere.
`benchmarks/gpu_check.sh` runs these on a lent GPU machine."""

import csv

import pytest
import torch

from mixdiff.config import load_config
from mixdiff.train import pretrain

from conftest import tiny_overrides

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("method, backbone", [("simclr", "resnet18"), ("barlow_twins", "resnet50"),
                                              ("dino", "vit_tiny")])
def test_bf16_mixdiff_run_on_gpu(tiny_data, tmp_path, method, backbone):
    extra = {"method": method, "model.backbone": backbone, "data.mode": "mixdiff",
             "trainer.accelerator": "gpu", "trainer.precision": "bf16-mixed",
             "data.image_size": 32, "model.patch_size": 8, "trainer.max_epochs": 2}
    if method == "dino":
        extra["augment.recipe"] = "dino"
    out = pretrain(load_config(None, tiny_overrides(tiny_data, **extra)), tmp_path / "run")
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(float(r["train/synthetic_fraction"]) == 1.0 for r in rows)
    assert all(torch.isfinite(torch.tensor(float(r["train/loss"]))) for r in rows)
