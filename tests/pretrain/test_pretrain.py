"""End-to-end pre-training on a tiny tree: every method in every mode, resume, bad inputs."""

import csv
import math
import re

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.pretrain.input.datamodule import MixDiffDataModule, ResumableSampler
from mixdiff.errors import ConfigError, NonFiniteLossError, RunDirError, UnreadableImageError
from mixdiff.runs import RunDir
from mixdiff.pretrain.train import pretrain

from conftest import make_tree, tiny_overrides

runner = CliRunner()
DINO = {"method": "dino", "augment.recipe": "dino"}


def _rows(run):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _run(tiny_data, out, **extra):
    return pretrain(load_config(None, tiny_overrides(tiny_data, **extra)), out)


def _expected_synthetic_fraction(cfg) -> float:
    """The share of synthetic samples in the batches epoch 0 trains on (the sampler is seeded)."""
    dm = MixDiffDataModule(cfg)
    dm.setup()
    seen = [i for i, _ in ResumableSampler(dm.train_set, cfg.trainer.seed, dm.epoch_samples)]
    seen = seen[:int(cfg.trainer.limit_train_batches) * cfg.trainer.batch_size]
    return sum(dm.train_set.samples[i].real is None for i in seen) / len(seen)


@pytest.mark.parametrize("mode", ["real", "synthetic", "mixdiff", "pooled", "extra"])
@pytest.mark.parametrize("method", ["simclr", "barlow_twins", "dino"])
def test_every_method_in_every_mode(tiny_data, tmp_path, method, mode):
    extra = {"method": method, "data.mode": mode, **(DINO if method == "dino" else {})}
    cfg = load_config(None, tiny_overrides(tiny_data, **extra))
    run = pretrain(cfg, tmp_path / "run")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    saved = OmegaConf.load(run / "config.yaml")
    assert (saved.method, saved.data.mode) == (method, mode)
    (row,) = _rows(run)
    for key in ("train/loss", "train/synthetic_fraction", "online_probe/val_top1",
                "online_knn/val_top1"):
        assert row[key] != "", key
    expected = {"synthetic": 1.0, "mixdiff": 1.0, "extra": 1.0, "real": 0.0}.get(mode)
    if mode == "pooled":  # real and synthetic samples mixed, as the seeded shuffle drew them
        expected = _expected_synthetic_fraction(cfg)
        assert 0.0 < expected < 1.0
    assert float(row["train/synthetic_fraction"]) == pytest.approx(expected)
    assert 0.0 <= float(row["online_knn/val_top1"]) <= 1.0
    assert torch.isfinite(torch.tensor(float(row["train/loss"])))


@pytest.mark.parametrize("method", ["simclr", "barlow_twins", "dino"])
def test_extra_positives_from_two_roots_weighted_by_lambda(tiny_data, tmp_path, method):
    """data.mode=extra with a twin from each root and lambda 0.5 trains with each method; data.json
    says how many views a sample has, and the loss differs from lambda 1's on the same seed."""
    import json

    extra = {"method": method, "data.mode": "extra", "data.synthetic_views": 2,
             **(DINO if method == "dino" else {})}
    losses = {}
    for lam in (1.0, 0.5):
        run = _run(tiny_data, tmp_path / f"lam{lam}", **extra, **{"data.synthetic_weight": lam})
        (row,) = _rows(run)
        losses[lam] = float(row["train/loss"])
        assert float(row["train/synthetic_fraction"]) == 1.0
        summary = json.loads((run / "data.json").read_text())
    recipe = 2 + (2 + 1 if method == "dino" else 0)  # tiny DINO: 2 real and 1 partner local crops
    assert (summary["views_per_sample"], summary["twin_views"]) == (recipe + 2, 2)
    assert all(math.isfinite(v) for v in losses.values()) and losses[0.5] != losses[1.0]


def test_dino_vit_with_local_crops(tiny_data, tmp_path):
    run = _run(tiny_data, tmp_path / "run", **DINO, **{
        "data.mode": "mixdiff", "model.backbone": "vit_tiny", "model.patch_size": 4})
    assert float(_rows(run)[0]["train/synthetic_fraction"]) == 1.0


def test_resume_continues_and_refuses_a_different_config(tiny_data, tmp_path):
    out = tmp_path / "run"
    _run(tiny_data, out, **{"data.mode": "mixdiff"})
    first = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    _run(tiny_data, out, **{"data.mode": "mixdiff", "trainer.max_epochs": 2})
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert int(rows[1]["step"]) == 2 * int(rows[0]["step"])  # continued, not restarted
    second = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert second["epoch"] == first["epoch"] + 1
    assert second["global_step"] == 2 * first["global_step"]
    with pytest.raises(RunDirError, match=r"data\.mode: 'mixdiff' -> 'real'.*optim\.lr"):
        _run(tiny_data, out, **{"data.mode": "real", "optim.lr": 0.1, "trainer.max_epochs": 2})


def test_a_resume_refuses_images_added_or_removed_since_the_run_started(tiny_data, tmp_path,
                                                                        monkeypatch):
    """Images added to data.real between a run and its resume were trained on without a word
    (data.json rewritten); a class removed ended in a state_dict size-mismatch traceback, after
    data.json was rewritten. data.json keeps each tree's fingerprint (names and sizes), and a
    resume on other images is refused before anything is written. A run from before the
    fingerprints is unknown, not changed: it resumes, with a warning."""
    import json
    import shutil

    import mixdiff.pretrain.train

    real = make_tree(tmp_path / "real", per_class=6)
    data = {**tiny_data, "real": real}
    out = _run(data, tmp_path / "run")
    files = ("data.json", "config.yaml", "metrics.csv", "checkpoints/last.ckpt")
    kept = {name: (out / name).read_bytes() for name in files}
    Image.new("RGB", (24, 24)).save(real / "circle" / "new.png")
    with pytest.raises(RunDirError, match=re.escape(
            "(data.real: 19 images where there were 18; 1 image(s) added in circle). Restore")):
        _run(data, out, **{"trainer.max_epochs": 2})
    (real / "circle" / "new.png").unlink()
    shutil.rmtree(real / "stripes")
    (real / "square" / "img00.png").write_bytes(b"other bytes")
    with pytest.raises(RunDirError, match=re.escape(
            "data.real: 12 images where there were 18; class(es) removed: stripes; other files "
            "(names or sizes) in square")):
        _run(data, out, **{"trainer.max_epochs": 2})
    assert {name: (out / name).read_bytes() for name in files} == kept  # nothing rewritten

    make_tree(tmp_path / "real", per_class=6)  # as it was
    summary = json.loads(kept["data.json"])
    del summary["fingerprints"]  # as an older mixdiff wrote it
    (out / "data.json").write_text(json.dumps(summary))
    warned = []
    monkeypatch.setattr(mixdiff.pretrain.train.log, "warning",
                        lambda message, *args: warned.append(message % args))
    _run(data, out, **{"trainer.max_epochs": 2})
    assert [r["epoch"] for r in _rows(out)] == ["0", "1"]
    assert any("keeps no fingerprint of data.real" in line and "unknown" in line
               for line in warned)
    assert "fingerprints" in json.loads((out / "data.json").read_text())  # kept from now on


@pytest.mark.parametrize("name, damage, said", [
    ("data.json", b"{not json", "data.json is not valid JSON"),
    ("data.json", b'{"fingerprints": {"data.real": {"images": "many"}}}',
     "data.json: its `fingerprints` are not what `mixdiff pretrain` writes"),
    ("metrics.csv", b"\xff\xfe\x00garbage", "metrics.csv is not a CSV file of numbers"),
    ("metrics.csv", b"garbage\n", "metrics.csv has no `epoch` column"),
    ("metrics.csv", b"epoch,step\n0,lots\n", "metrics.csv, line 2: 'lots' in column 'step'"),
])
def test_a_resume_refuses_a_damaged_data_json_or_metrics_csv(tiny_data, tmp_path, name, damage,
                                                             said):
    """DD2: a damaged data.json was taken for a run of unknown fingerprint, and resumed on any
    images; DM-res: a damaged metrics.csv was kept under the new rows (or stopped the run with a
    traceback at its first epoch's end). Both are one line naming the file, nothing rewritten."""
    out = _run(tiny_data, tmp_path / "run")
    (out / name).write_bytes(damage)
    files = ("data.json", "config.yaml", "metrics.csv", "checkpoints/last.ckpt")
    kept = {file: (out / file).read_bytes() for file in files}
    with pytest.raises(RunDirError, match=re.escape(said)) as refused:
        _run(tiny_data, out, **{"trainer.max_epochs": 2})
    assert str(out / name) in str(refused.value) and "\n" not in str(refused.value)
    assert "restore it, or remove it" in str(refused.value)
    assert {file: (out / file).read_bytes() for file in files} == kept


def test_init_from_copies_weights(tiny_data, tmp_path):
    first = _run(tiny_data, tmp_path / "a", **{"data.mode": "synthetic"})
    ckpt = first / "checkpoints" / "last.ckpt"
    weights = torch.load(ckpt, weights_only=False)["state_dict"]
    # the "Sequential" baseline: synthetic first, then real, starting from those weights
    cfg = load_config(None, tiny_overrides(tiny_data, **{"init_from": ckpt,
                                                         "trainer.limit_train_batches": 1,
                                                         "optim.lr": 0.0}))
    second = pretrain(cfg, tmp_path / "b")
    after = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    conv = "backbone.conv1.weight"
    assert torch.equal(weights[conv], after[conv])  # lr 0: still exactly the loaded weights
    with pytest.raises(ConfigError, match="init_from.*not found"):
        pretrain(load_config(None, tiny_overrides(tiny_data, init_from=tmp_path / "none.ckpt")),
                 tmp_path / "c")


def _nan_loss(monkeypatch):
    from mixdiff.pretrain.methods.simclr import SimCLR

    monkeypatch.setattr(SimCLR, "ssl_loss", lambda self, *a: torch.tensor(float("nan"),
                                                                          requires_grad=True))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run(tiny_data, out)
    good = (out / "checkpoints" / "last.ckpt").read_bytes()
    _nan_loss(monkeypatch)
    with pytest.raises(NonFiniteLossError) as error:
        _run(tiny_data, out, **{"trainer.max_epochs": 2})
    message = str(error.value)
    assert "became nan at epoch 1" in message
    assert "last good checkpoint" in message and "epoch 0, step 2" in message
    # its advice can be followed: this folder keeps its run, so in another one, from its weights
    assert "in another --out" in message and f"init_from={out / 'checkpoints' / 'last.ckpt'}" \
        in message
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == good
    assert [r["epoch"] for r in _rows(out)] == ["0"]


def test_nan_message_claims_no_checkpoint_it_does_not_have(tiny_data, tmp_path, monkeypatch):
    _nan_loss(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as error:
        _run(tiny_data, out, **{"trainer.precision": "bf16-mixed"})
    message = str(error.value)
    assert "no checkpoint had been written yet" in message
    assert "bf16" not in message  # it is already in use: no advice to switch to it
    assert not (out / "checkpoints" / "last.ckpt").exists()
    assert "with the same --out" in message
    with pytest.raises(NonFiniteLossError, match="use trainer.precision=bf16-mixed"):
        _run(tiny_data, tmp_path / "fp16", **{"trainer.precision": "16-mixed"})
    # nothing was saved, so nothing is protected: the advice works in the same folder
    monkeypatch.undo()
    _run(tiny_data, out, **{"trainer.precision": "bf16-mixed", "optim.lr": 1e-5})
    assert [r["epoch"] for r in _rows(out)] == ["0"]


def test_unreadable_images_are_all_named_before_training(tmp_path, tiny_data):
    real = make_tree(tmp_path / "real", per_class=4)
    for bad in ("square/img02.png", "circle/img01.png"):
        (real / bad).write_bytes(b"\x89PNG broken")
    with pytest.raises(UnreadableImageError) as error:
        pretrain(load_config(None, tiny_overrides(tiny_data, **{
            "data.real": real, "data.mode": "real"})), tmp_path / "run")
    message = str(error.value)
    assert "2 unreadable image(s)" in message
    assert "square/img02.png" in message and "circle/img01.png" in message
    assert not (tmp_path / "run").exists()  # nothing written for a run that could not start


@pytest.mark.parametrize("workers", [0, 1])
def test_image_that_fails_to_decode_while_training_is_one_clear_error(tmp_path, tiny_data,
                                                                      workers):
    real = make_tree(tmp_path / "real", per_class=4)
    whole = (real / "square" / "img02.png").read_bytes()
    (real / "square" / "img02.png").write_bytes(whole[:len(whole) * 2 // 3])  # header intact
    with pytest.raises(UnreadableImageError) as error:
        pretrain(load_config(None, tiny_overrides(tiny_data, **{
            "data.real": real, "data.mode": "real", "data.num_workers": workers,
            "trainer.limit_train_batches": 1.0})), tmp_path / "run")
    message = str(error.value)
    assert message.startswith(f"cannot read image {real / 'square' / 'img02.png'}: ")
    assert "mixdiff data verify" in message and "Traceback" not in message


def test_a_failed_start_leaves_nothing_that_refuses_the_fixed_command(tiny_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Exception, match="image folder not found"):
        _run(tiny_data, out, **{"data.real": tmp_path / "absent"})
    assert not (out / "config.yaml").exists()
    _run(tiny_data, out)  # the corrected command starts cleanly in the same folder
    assert (out / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPU")
def test_asking_for_a_gpu_without_one_is_one_clear_line(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        _run(tiny_data, tmp_path / "run", **{"trainer.accelerator": "gpu"})
    assert not (tmp_path / "run").exists()


def test_loggers(tiny_data, tmp_path):
    run = _run(tiny_data, tmp_path / "tb", **{"trainer.logger": "tensorboard"})  # the default
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    run = _run(tiny_data, tmp_path / "csv", **{"trainer.logger": "csv"})
    with open(run / "logs" / "csv" / "version_0" / "metrics.csv", newline="") as handle:
        assert "train/loss" in next(csv.reader(handle))
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"mixdiff\[wandb\]"):
            _run(tiny_data, tmp_path / "wandb", **{"trainer.logger": "wandb"})


def test_a_run_saved_by_the_previous_version_still_resumes(tiny_data, tmp_path):
    out = _run(tiny_data, tmp_path / "run")
    text = (out / "config.yaml").read_text()
    old = text.replace("online_eval:", "eval:").replace("  proj_layers: 2\n", "")
    assert old != text
    (out / "config.yaml").write_text(old)
    _run(tiny_data, out, **{"trainer.max_epochs": 2})
    assert [r["epoch"] for r in _rows(out)] == ["0", "1"]


def test_pooled_epochs_are_as_long_as_real_ones_unless_asked(tiny_data, tmp_path):
    """Equal compute: a pooled epoch draws as many samples as there are real images (another
    draw of the pool each epoch); data.pooled_epoch=all goes through the whole pool, and a run
    saved before the key existed is read as what it did (all)."""
    def datamodule(**extra):
        dm = MixDiffDataModule(load_config(None, tiny_overrides(tiny_data, **{
            "data.mode": "pooled", "data.val_fraction": 0.0, **extra})))
        dm.setup()
        return dm

    pooled = datamodule()
    real = pooled.summary["real_images_train"]
    assert len(pooled.train_set) == 3 * real  # the real images and two variants of twins
    assert pooled.epoch_samples == pooled.summary["epoch_samples"] == real
    sampler = pooled.train_dataloader().sampler
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        assert len(epochs[-1]) == len(sampler) == real and len(set(epochs[-1])) == real
    assert len(set().union(*map(set, epochs))) > real  # other samples each epoch
    everything = datamodule(**{"data.pooled_epoch": "all"})
    assert everything.epoch_samples == len(everything.train_set) == 3 * real
    assert len(everything.train_dataloader().sampler) == 3 * real
    with pytest.raises(ConfigError, match="data.pooled_epoch"):
        datamodule(**{"data.pooled_epoch": "twice"})
    run = _run(tiny_data, tmp_path / "run", **{"data.mode": "pooled"})
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(saved.replace("  pooled_epoch: real\n", ""))
    assert RunDir(run).load_config().data.pooled_epoch == "all"


def test_cli_pretrain_and_clear_errors(tiny_data, tmp_path):
    args = ["pretrain", *tiny_overrides(tiny_data, **{"data.mode": "mixdiff",
                                                     "augment.recipe": "asymmetric"}),
            "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "metrics.csv").is_file()
    bad = runner.invoke(app, ["pretrain", "data.real=x", "model.backbone=resnet9",
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "model.backbone" in bad.output and "resnet18" in bad.output
    missing = runner.invoke(app, ["pretrain", *tiny_overrides(tiny_data, **{
        "data.synthetic": f"[{tmp_path}]", "data.mode": "mixdiff"}), "--out", str(tmp_path / "m")])
    assert missing.exit_code == 2 and "synthetic twins are missing" in missing.output


def test_two_process_ddp_run_scales_lr_by_global_batch(tiny_data, tmp_path):
    extra = {"data.mode": "mixdiff", "trainer.devices": 2, "trainer.strategy": "ddp_spawn",
             "optim.lr": 0.256, "trainer.batch_size": 4, "optim.min_lr_ratio": 1.0}
    run = _run(tiny_data, tmp_path / "run", **extra)
    (row,) = _rows(run)
    assert float(row["train/lr"]) == pytest.approx(0.256 * 4 * 2 / 256)  # 2 processes x 4
    assert float(row["train/synthetic_fraction"]) == 1.0
    assert row["online_knn/val_top1"] != ""


def test_epochs_without_evaluation_leave_online_columns_empty(tiny_data, tmp_path):
    run = _run(tiny_data, tmp_path / "run", **{"trainer.max_epochs": 2,
                                                "online_eval.every_n_epochs": 2})
    first, second = _rows(run)
    assert first["online_knn/val_top1"] == "" and second["online_knn/val_top1"] != ""
    assert first["train/loss"] != ""


def test_the_progress_bar_does_not_read_the_loss_after_every_step(tiny_data, tmp_path,
                                                                  monkeypatch):
    """Each read of the logged metrics waits for the device: the bar reads them at most every
    METRICS_EVERY_S between steps, and always at the ends of epoch and validation."""
    import mixdiff.pretrain.train
    from lightning.pytorch.callbacks import RichProgressBar

    from mixdiff.pretrain.callbacks import ProgressBar

    reads, steps = [], []
    read, step_end = RichProgressBar.get_metrics, RichProgressBar.on_train_batch_end
    monkeypatch.setattr(RichProgressBar, "get_metrics",
                        lambda self, *a: reads.append(1) or read(self, *a))
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end",
                        lambda self, *a: steps.append(1) or step_end(self, *a))
    monkeypatch.setattr(mixdiff.pretrain.train, "show_progress_bar", lambda cfg: True)

    def run(every_s: float, name: str) -> tuple[int, int]:
        reads.clear(), steps.clear()
        monkeypatch.setattr(ProgressBar, "METRICS_EVERY_S", every_s)
        _run(tiny_data, tmp_path / name, **{"trainer.batch_size": 2,
                                            "trainer.limit_train_batches": 6})
        return len(reads), len(steps)

    every_time, step_count = run(0.0, "unthrottled")
    assert step_count >= 4 and every_time >= step_count + 2  # each step, epoch and validation
    assert run(1e9, "throttled") == (every_time - (step_count - 1), step_count)  # 1st step only


def test_an_unlabelled_val_tree_is_refused_before_anything_is_written(tiny_data, tmp_path):
    import shutil

    from mixdiff.errors import DatasetError

    flat = tmp_path / "flat"
    flat.mkdir()
    for image in sorted(tiny_data["real"].rglob("*.png"))[:4]:
        shutil.copy(image, flat / f"{image.parent.name}-{image.name}")
    with pytest.raises(DatasetError, match=r"`data.val` = .*flat: its images sit directly"):
        pretrain(load_config(None, tiny_overrides(tiny_data, **{"data.val": flat})),
                 tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_data_settings_that_do_not_do_what_they_seem_are_warned_about(tiny_data):
    from mixdiff.pretrain.input.datamodule import data_warnings

    def notes(**settings):
        return data_warnings(load_config(None, tiny_overrides(tiny_data, **settings)).data)

    assert notes(**{"data.mode": "mixdiff"}) == []
    assert any("ignored in data.mode=real" in n for n in notes(**{"data.mode": "real"}))
    itself = notes(**{"data.mode": "mixdiff", "data.synthetic": f"[{tiny_data['real']}]"})
    assert len(itself) == 1 and "is data.real itself" in itself[0]


def test_a_zero_learning_rate_is_warned_about(tiny_data):
    """optim.lr=0 is allowed (it keeps init_from's weights while the probe trains), but a run
    that looks like training and changes nothing says so."""
    from mixdiff.pretrain.train import optim_warnings

    def notes(**settings):
        return optim_warnings(load_config(None, tiny_overrides(tiny_data, **settings)))

    assert notes() == [] and notes(**{"optim.lr": 0, "trainer.max_epochs": 0}) == []
    (note,) = notes(**{"optim.lr": 0})
    assert "optim.lr=0" in note and "never change" in note and "its initial weights" in note
