"""The references every result is measured against: the untrained encoder (`mixdiff pretrain
trainer.max_epochs=0`, the seed's initial weights, evaluated like any run) and the raw pixels
(`mixdiff eval knn|linear --pixels`)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.pretrain.input.datamodule import MixDiffDataModule
from mixdiff.data.tree import load_rgb
from mixdiff.data.eval_transform import eval_view
from mixdiff.evaluate.features import Encoder, labelled_sets
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.pretrain.methods import METHODS
from mixdiff.report.build import write_report
from mixdiff.runs import RunDir
from mixdiff.pretrain.train import pretrain

from conftest import make_tree, tiny_overrides

runner = CliRunner()


def _backbone(checkpoint) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def _seeded_initialisation(cfg) -> dict[str, torch.Tensor]:
    """The weights `mixdiff pretrain` starts a run of this config from (its own steps, in order)."""
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    datamodule = MixDiffDataModule(cfg)
    datamodule.setup()
    model = METHODS[cfg.method](OmegaConf.to_container(cfg, resolve=True), datamodule.num_classes)
    return {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}


@pytest.fixture(scope="module")
def untrained(tiny_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("untrained")
    trees = {"train": make_tree(base / "toy" / "train", 6, seed=20),
             "val": make_tree(base / "toy" / "val", 4, seed=21)}
    cfg = load_config(None, tiny_overrides(tiny_data, **{"trainer.max_epochs": 0,
                                                          "trainer.seed": 3}))
    return {"cfg": cfg, "run": RunDir(pretrain(cfg, base / "untrained-s3")), **trees}


def test_an_untrained_run_holds_the_seeds_initial_weights(untrained, tiny_data, tmp_path):
    run = untrained["run"]
    saved = _backbone(run.last_checkpoint)
    reference = _seeded_initialisation(untrained["cfg"])
    assert saved.keys() == reference.keys() and len(saved) > 10
    assert all(torch.equal(saved[k], reference[k]) for k in saved)
    assert run.metrics.read_text() == "epoch,step\n"  # no epochs
    assert torch.load(run.last_checkpoint, weights_only=False)["epoch"] == 0
    # the mode (and its twins) does not change the initialisation; the seed does
    other_mode = pretrain(load_config(None, tiny_overrides(
        tiny_data, **{"trainer.max_epochs": 0, "trainer.seed": 3, "data.mode": "mixdiff"})),
        tmp_path / "mixdiff")
    assert all(torch.equal(v, saved[k]) for k, v in
               _backbone(RunDir(other_mode).last_checkpoint).items())
    other_seed = pretrain(load_config(None, tiny_overrides(
        tiny_data, **{"trainer.max_epochs": 0, "trainer.seed": 4})), tmp_path / "s4")
    assert not all(torch.equal(v, saved[k]) for k, v in
                   _backbone(RunDir(other_seed).last_checkpoint).items())


def test_an_untrained_run_trains_on_when_given_epochs(untrained, tiny_data, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_data, **{"trainer.max_epochs": 0}))
    run = RunDir(pretrain(cfg, tmp_path / "r"))
    pretrain(load_config(None, tiny_overrides(tiny_data, **{"trainer.max_epochs": 1})), run.root)
    assert len(run.metrics.read_text().splitlines()) == 2  # the header and epoch 0
    with pytest.raises(Exception, match="at least 0"):
        load_config(None, tiny_overrides(tiny_data, **{"trainer.max_epochs": -1}))


def test_eval_accepts_the_untrained_run_and_scores_raw_pixels(untrained):
    run, trees = untrained["run"], ["--train", untrained["train"], "--val", untrained["val"],
                                    "--device", "cpu", "--num-workers", "0"]
    for command in ("knn", "linear"):
        result = runner.invoke(app, ["eval", command, "--run", str(run.root),
                                     *map(str, trees)])
        assert result.exit_code == 0, result.output
        untrained_result = json.loads(run.eval_result(command, "toy").read_text())
        assert untrained_result["checkpoint"]["epoch"] == 0
        result = runner.invoke(app, ["eval", command, "--pixels", "--run", str(run.root),
                                     *map(str, trees)])
        assert result.exit_code == 0, result.output
        pixels = json.loads(run.eval_result(command, "toy-pixels").read_text())
        assert pixels["weights"] == "pixels" and pixels["settings"]["feature_dim"] == 3 * 16 * 16
        assert pixels["checkpoint"]["sha256"] is None and 0.0 <= pixels["value"] <= 1.0
    both = runner.invoke(app, ["eval", "knn", "--pixels", "--weights", "student", "--run",
                               str(run.root), *map(str, trees)])
    assert both.exit_code == 2 and "--pixels scores no weights" in both.output


def test_pixel_features_are_the_flattened_evaluation_images(untrained):
    run = untrained["run"]
    train, _ = labelled_sets(untrained["train"], untrained["val"])
    features = Encoder.pixels(run, "cpu").encode(train, options=EncodeOptions(num_workers=0))
    transform = eval_view(run.load_config())
    from torchvision.transforms import v2
    expected = torch.stack([transform(v2.PILToTensor()(load_rgb(p))).flatten()
                            for p in train.paths])
    assert torch.equal(features, expected)


def test_the_report_shows_the_references_as_settings_of_their_own(untrained, tmp_path):
    run = untrained["run"]
    trees = ["--train", untrained["train"], "--val", untrained["val"], "--device", "cpu",
             "--num-workers", "0"]
    for args in (["knn"], ["linear"], ["knn", "--pixels"]):
        result = runner.invoke(app, ["eval", *args, "--run", str(run.root), *map(str, trees)])
        assert result.exit_code == 0, result.output
    report = write_report([run.root], tmp_path / "report")
    document = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [(s["label"], s["kind"]) for s in document["settings"]] == [
        ("pixels", "pixels"), ("untrained", "untrained")]
    assert not any(note.startswith("untrained-s3: no metrics.csv") for note in report.notes)
    markdown = (tmp_path / "report" / "results.md").read_text()
    assert "| untrained | 1 |" in markdown and "| pixels | 1 |" in markdown
