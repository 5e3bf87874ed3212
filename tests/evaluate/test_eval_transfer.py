"""`mixdiff eval transfer`: fake datasets written in torchvision's real on-disk layouts (CIFAR-10's
pickled batches, DTD's and Flowers-102's official split files), read by torchvision itself."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import scipy.io
import torchvision.datasets.cifar
import torchvision.datasets.flowers102
from PIL import Image
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.evaluate.features import Encoder
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.results import read_result
from mixdiff.evaluate.transfer import (TRANSFER_DATASETS, load_split, synclr_val_split,
                                       transfer_eval)

from conftest import _pattern

runner = CliRunner()
SHAPES = 3  # conftest's patterns: circle, square, stripes


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks the MD5 of CIFAR's batches and Flowers' .mat files against the real
    downloads; fake files cannot match. This patch (tests only) keeps the check that the files
    exist and skips the checksum; everything else is torchvision's own reading code."""
    def exists(path, md5=None):
        return __import__("os").path.isfile(path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.flowers102, "check_integrity", exists)


def write_cifar10(root, per_batch=6, test=9):
    """cifar-10-batches-py/: five training pickles, a test pickle and batches.meta, rows of
    3072 bytes (R, G, B planes of a 32x32 image), as in the real archive."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(count, seed):
        labels = [i % SHAPES for i in range(count)]
        rows = [_pattern(y, seed * 100 + i, 32).transpose(2, 0, 1).reshape(-1)
                for i, y in enumerate(labels)]
        return {"data": np.stack(rows), "labels": labels}
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as handle:
            pickle.dump(batch(per_batch, i), handle)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(batch(test, 9), handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"]}, handle)


def write_dtd(root, per_split=4):
    """dtd/dtd/images/<class>/<class>_NNNN.jpg and labels/{train,val,test}1.txt."""
    data = root / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True)
    classes = ["banded", "dotted", "striped"]
    lines = {split: [] for split in ("train", "val", "test")}
    for label, name in enumerate(classes):
        (data / "images" / name).mkdir(parents=True)
        for s, split in enumerate(lines):
            for i in range(per_split):
                file = f"{name}_{s}{i:03d}.jpg"
                Image.fromarray(_pattern(label, s * 100 + i + label * 10, 32)).save(
                    data / "images" / name / file, quality=95)
                lines[split].append(f"{name}/{file}")
    for split, names in lines.items():
        (data / "labels" / f"{split}1.txt").write_text("\n".join(names) + "\n")


def write_flowers102(root, per_split=3):
    """flowers-102/jpg/image_NNNNN.jpg, imagelabels.mat (1-based labels) and setid.mat
    (trnid / valid / tstid image ids), as torchvision reads them with scipy."""
    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    image_id = 0
    for split in ids:
        for label in range(SHAPES):
            for i in range(per_split):
                image_id += 1
                Image.fromarray(_pattern(label, image_id, 32)).save(
                    folder / "jpg" / f"image_{image_id:05d}.jpg", quality=95)
                labels.append(label + 1)
                ids[split].append(image_id)
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": np.array(labels)})
    scipy.io.savemat(folder / "setid.mat", {k: np.array(v) for k, v in ids.items()})


def test_the_registry_is_the_papers_eight_with_synclrs_metrics():
    assert list(TRANSFER_DATASETS) == ["cifar10", "cifar100", "food101", "flowers102", "pets",
                                       "aircraft", "dtd", "stl10"]
    per_class = {n for n, s in TRANSFER_DATASETS.items() if s.metric == "mean_per_class_accuracy"}
    assert per_class == {"flowers102", "pets", "aircraft"}
    assert {n for n, s in TRANSFER_DATASETS.items() if s.official_val} == \
        {"flowers102", "aircraft", "dtd"}


def test_synclr_random_split_matches_numpy_global_seed():
    train, val = synclr_val_split(50)
    indices = list(range(50))
    np.random.seed(0)  # what SynCLR's code does
    np.random.shuffle(indices)
    assert val.tolist() == indices[:10] and train.tolist() == indices[10:]


def test_cifar10_random_val_split_and_top1(eval_runs, tmp_path, no_md5):
    write_cifar10(tmp_path)
    train = load_split("cifar10", tmp_path, "train")
    assert len(train) == 30 and train.classes[0] == "airplane"
    assert train.labels.tolist() == [i % SHAPES for i in range(6)] * 5
    assert train.read(0).size == (32, 32)
    result = read_result(transfer_eval(Encoder.from_run(eval_runs["dino"]), "cifar10", tmp_path,
                                       options=EncodeOptions(num_workers=0)))
    assert (result["dataset"], result["split"], result["images"], result["classes"]) == \
        ("cifar10", "test", 9, 3)
    assert result["metric"] == "top1" and result["value"] == result["top1"]
    assert result["details"]["splits"] == {"train": 24, "val": 6, "trainval": 30, "test": 9}
    assert result["details"]["dataset_classes"] == 10 and "top5" in result
    sweep = result["details"]["weight_decay_sweep"]
    assert sweep["metric"] == "top1" and sweep["points"]
    assert result["weights"] == "teacher"
    assert "not SynCLR's 224 px" in result["settings"]["preprocessing"]


def test_dtd_and_flowers_use_official_val_splits(eval_runs, tmp_path, no_md5):
    write_dtd(tmp_path)
    write_flowers102(tmp_path)
    encoder = Encoder.from_run(eval_runs["dino"])
    dtd = read_result(transfer_eval(encoder, "dtd", tmp_path, options=EncodeOptions(num_workers=0)))
    assert dtd["details"]["splits"] == {"train": 12, "val": 12, "trainval": 24, "test": 12}
    assert dtd["metric"] == "top1" and dtd["top1"] > 1 / 3 + 0.25  # well above chance
    flowers = read_result(transfer_eval(encoder, "flowers102", tmp_path,
                                        options=EncodeOptions(num_workers=0)))
    assert flowers["details"]["splits"] == {"train": 9, "val": 9, "trainval": 18, "test": 9}
    assert flowers["metric"] == "mean_per_class_accuracy"
    assert flowers["details"]["weight_decay_sweep"]["metric"] == "mean_per_class_accuracy"
    assert flowers["details"]["dataset_classes"] == 102 and flowers["classes"] == 3
    assert "official val split" in flowers["protocol"]
    # a second call reads every split from the feature cache and gives the same numbers
    again = read_result(transfer_eval(encoder, "flowers102", tmp_path,
                                      options=EncodeOptions(num_workers=0)))
    assert again["value"] == flowers["value"]


def test_missing_dataset_says_where_and_to_download(eval_runs, tmp_path):
    result = runner.invoke(app, ["eval", "transfer", "--run", str(eval_runs["simclr"]),
                                 "--dataset", "pets", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path}/oxford-iiit-pet" in result.output and "--download" in result.output
    assert len(result.output.strip().splitlines()) == 1
    broken = tmp_path / "cifar-10-batches-py"
    broken.mkdir()
    result = runner.invoke(app, ["eval", "transfer", "--run", str(eval_runs["simclr"]),
                                 "--dataset", "cifar10", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "torchvision could not read" in result.output
    unknown = runner.invoke(app, ["eval", "transfer", "--run", str(eval_runs["simclr"]),
                                  "--dataset", "mnist", "--root", str(tmp_path)])
    assert unknown.exit_code == 2 and "cifar10" in unknown.output


def test_transfer_cli_writes_result_and_table(eval_runs, tmp_path, no_md5):
    write_dtd(tmp_path, per_split=2)
    result = runner.invoke(app, ["eval", "transfer", "--run", str(eval_runs["simclr"]),
                                 "--dataset", "dtd", "--root", str(tmp_path), "--device", "cpu",
                                 "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    path = eval_runs["simclr"] / "eval" / "transfer" / "dtd.json"
    saved = json.loads(path.read_text())
    assert saved["weights"] == "student" and f"{saved['value']:.2%}" in result.output
