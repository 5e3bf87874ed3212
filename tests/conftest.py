"""Shared fixtures: a tiny labelled image tree with two synthetic roots, and tiny run settings."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("circle", "square", "stripes")


def _pattern(label: int, seed: int, size: int = 24) -> np.ndarray:
    """A colour image whose class is visible in its shape (so kNN has something to find)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    if label == 0:
        mask = (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1
    elif label == 1:
        mask = (abs(x - 0.5) < 0.3) & (abs(y - 0.5) < 0.3)
    else:
        mask = (np.floor(x * 6) % 2) == 0
    colour = rng.integers(80, 255, size=3)
    image = rng.integers(0, 60, size=(size, size, 3))
    image[mask] = colour
    return image.astype(np.uint8)


def make_tree(root: Path, per_class: int = 6, ext: str = ".png", seed: int = 0,
              classes=CLASSES) -> Path:
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_pattern(label, seed * 1000 + label * 100 + i)).save(
                root / name / f"img{i:02d}{ext}")
    return root


@pytest.fixture
def full_disk(monkeypatch):
    """A full disk for every atomic write: the hidden temporary is made beside its file as usual,
    but its bytes go to /dev/full, whose every write fails with ENOSPC (torch.save then reports
    "unexpected pos", with the OSError only as its context)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    made = tempfile.mkstemp

    def mkstemp(dir, prefix, suffix):
        fd, name = made(dir=dir, prefix=prefix, suffix=suffix)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """real/<class>/imgNN.png (3 classes x 6) with twins in syn0 (.jpg) and syn1 (.png)."""
    base = tmp_path_factory.mktemp("tiny")
    return {"real": make_tree(base / "real"), "syn0": make_tree(base / "syn0", ext=".jpg", seed=1),
            "syn1": make_tree(base / "syn1", seed=2), "val": make_tree(base / "val", 2, seed=3)}


def tiny_overrides(data: dict[str, Path], **extra) -> list[str]:
    """Settings for a run of a few seconds on the CPU."""
    settings = {
        "data.real": data["real"], "data.synthetic": f"[{data['syn0']},{data['syn1']}]",
        "data.image_size": 16, "data.num_workers": 0, "data.val_fraction": 0.2,
        "model.backbone": "resnet18", "model.small_stem": "true",
        "simclr.proj_hidden_dim": 32, "simclr.proj_output_dim": 16,
        "barlow_twins.proj_hidden_dim": 32, "barlow_twins.proj_output_dim": 32,
        "dino.proj_hidden_dim": 32, "dino.bottleneck_dim": 16, "dino.out_dim": 64,
        "augment.local_crops_real": 2, "augment.local_crops_synthetic": 1,
        "trainer.batch_size": 4, "trainer.max_epochs": 1, "trainer.limit_train_batches": 2,
        "trainer.precision": "32-true", "trainer.progress_bar": "false",
        "trainer.accelerator": "cpu", "optim.warmup_epochs": 0, "trainer.logger": "none",
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


DINO = {"method": "dino", "augment.recipe": "dino"}  # tiny DINO runs: multi-crop


@pytest.fixture(scope="session")
def eval_runs(tiny_data, tmp_path_factory):
    """A DINO run and a SimCLR run (one epoch each), and a toy train/val pair of trees: trained
    once per session, for every test that needs a trained run and does not change it."""
    from mixdiff.config import load_config
    from mixdiff.pretrain.train import pretrain

    base = tmp_path_factory.getbasetemp() / "eval_runs"
    runs = {}
    for name, extra in (("dino", DINO), ("simclr", {})):
        runs[name] = base / name
        if not (runs[name] / "checkpoints" / "last.ckpt").is_file():
            pretrain(load_config(None, tiny_overrides(tiny_data, **extra)), runs[name])
    toy = {"train": base / "toy" / "train", "val": base / "toy" / "val"}
    if not toy["val"].is_dir():
        make_tree(toy["train"], 8, seed=10)
        make_tree(toy["val"], 6, seed=11)
    return {**runs, **toy}


class RunsCode:
    """Pickled, it asks the loader to call os.system: what a malicious torch file carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def save_malicious(path: Path, marker: Path, content: dict | None = None) -> Path:
    """A real torch file (`content`, e.g. a whole checkpoint, plus one hostile object) that would
    create `marker` if it were ever unpickled without weights_only."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a new file: never written through a hard link's other names
    torch.save({**(content or {}), "payload": RunsCode(marker)}, path)
    return path
