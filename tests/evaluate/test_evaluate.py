"""Offline evaluation core: frozen features and their cache, kNN, the L-BFGS linear probe, result
files, probes. Real tiny runs of `mixdiff pretrain`, real image trees on disk."""

from __future__ import annotations

import json
import os
from dataclasses import replace
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.errors import DatasetError, MixDiffError, RunDirError
from mixdiff.evaluate.features import Encoder, ImageSet, labelled_sets
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.knn import knn_eval
from mixdiff.knn import knn_accuracy, weighted_knn_votes
from mixdiff.evaluate.linear import LinearProbe, linear_eval, load_probe
from mixdiff.evaluate.logistic import (LogisticSettings, select_and_fit, stratified_holdout,
                                       sweep_weight_decay)
from mixdiff.evaluate.results import (REQUIRED, mean_per_class_accuracy, read_result,
                                      write_result)
from mixdiff.runs import RunDir
from mixdiff.pretrain.train import pretrain

from conftest import DINO, make_tree, tiny_overrides


def _forward_counter(encoder: Encoder) -> list[int]:
    calls = [0]
    encoder.backbone.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# --- image sets ----------------------------------------------------------------------------------
def test_image_set_from_tree_names_and_labels(eval_runs):
    images = ImageSet.from_tree(eval_runs["val"])
    assert (images.name, images.split) == ("toy", "val")
    assert images.classes == ("circle", "square", "stripes")
    assert images.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert all(p.endswith(".png") for p in images.paths)


def test_train_and_val_trees_must_share_classes(eval_runs, tmp_path):
    other = make_tree(tmp_path / "toy" / "val", 1, classes=("circle", "square", "dots"))
    with pytest.raises(DatasetError, match=r"only in the train tree: \['stripes'\], only in the "
                                           r"val tree: \['dots'\]"):
        labelled_sets(eval_runs["train"], other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found under .*empty"):
        labelled_sets(eval_runs["train"], tmp_path / "empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    with pytest.raises(DatasetError, match="expected class folders"):
        labelled_sets(flat, eval_runs["val"])


# --- the encoder -------------------------------------------------------------------------------
def test_dino_defaults_to_the_teacher_and_loads_its_weights(eval_runs):
    state = torch.load(eval_runs["dino"] / "checkpoints" / "last.ckpt",
                       weights_only=False)["state_dict"]
    for weights, prefix in (("teacher", "teacher_backbone."), ("student", "backbone.")):
        encoder = Encoder.from_run(eval_runs["dino"], weights=None if weights == "teacher"
                                   else weights, device="cpu")
        assert encoder.weights == weights and encoder.default_weights == "teacher"
        for key, value in encoder.backbone.state_dict().items():
            assert torch.equal(value, state[prefix + key]), key
    # the EMA teacher has moved less than the student: they differ
    assert not torch.equal(state["backbone.conv1.weight"], state["teacher_backbone.conv1.weight"])
    simclr = Encoder.from_run(eval_runs["simclr"])
    assert simclr.weights == simclr.default_weights == "student"
    saved = torch.load(eval_runs["simclr"] / "checkpoints" / "last.ckpt", weights_only=False)
    assert simclr.checkpoint_record()["epoch"] == saved["epoch"]
    assert simclr.checkpoint_record()["global_step"] == saved["global_step"] > 0


def test_encoder_errors_are_one_line(eval_runs, tmp_path):
    with pytest.raises(RunDirError, match="has no teacher weights .*method=simclr.*--weights "
                                          "student"):
        Encoder.from_run(eval_runs["simclr"], weights="teacher")
    with pytest.raises(MixDiffError, match="--weights 'ema'"):
        Encoder.from_run(eval_runs["dino"], weights="ema")
    with pytest.raises(RunDirError, match="not a `mixdiff pretrain` run folder"):
        Encoder.from_run(tmp_path)
    shutil.copy(eval_runs["simclr"] / "config.yaml", tmp_path / "config.yaml")
    with pytest.raises(RunDirError, match="has no checkpoints/last.ckpt yet"):
        Encoder.from_run(tmp_path)


def test_feature_cache_hits_and_invalidates(eval_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(eval_runs["dino"], run, ignore=shutil.ignore_patterns("eval", "cache"))
    images = ImageSet.from_tree(make_tree(tmp_path / "set" / "test", 2, seed=5))
    encoder = Encoder.from_run(run)
    calls = _forward_counter(encoder)
    first = encoder.encode(images, options=EncodeOptions(num_workers=0, batch_size=4))
    assert first.shape == (6, encoder.feature_dim) and first.dtype == torch.float32
    assert calls[0] == 2  # 6 images in batches of 4
    again = encoder.encode(images, options=EncodeOptions(num_workers=0, batch_size=4))
    assert calls[0] == 2 and torch.equal(first, again)  # read from the cache
    assert len(list((run / "cache" / "features").glob("*.pt"))) == 1
    # a changed input is encoded again: a tag, other weights, a changed file, another checkpoint
    encoder.encode(images, pre_transform=lambda image, i: image.rotate(90), tag="rot90",
                   options=EncodeOptions(num_workers=0))
    assert calls[0] == 3
    student = Encoder.from_run(run, weights="student")
    student_calls = _forward_counter(student)
    student.encode(images, options=EncodeOptions(num_workers=0))
    assert student_calls[0] == 1
    Image.new("RGB", (24, 24), "red").save(images.paths[0])
    changed = encoder.encode(images, options=EncodeOptions(num_workers=0))
    assert calls[0] == 4 and not torch.equal(changed[0], first[0])
    assert torch.equal(changed[1:], first[1:])
    checkpoint = run / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    saved["state_dict"]["teacher_backbone.conv1.weight"] += 0.1
    torch.save(saved, checkpoint)
    retrained = Encoder.from_run(run)
    retrained_calls = _forward_counter(retrained)
    retrained.encode(images, options=EncodeOptions(num_workers=0))
    assert retrained_calls[0] == 1
    assert len(list((run / "cache" / "features").glob("*.pt"))) == 5


def _damaged_caches(saved: dict) -> dict:
    """DC2: features of another shape; DC2b: NaN features; DC2c: no features; DC2d: a bare
    tensor; each as the probe's files held."""
    return {"DC2": {**saved, "features": torch.randn(7, 3)},
            "DC2b": {**saved, "features": torch.full_like(saved["features"], float("nan"))},
            "DC2c": {k: v for k, v in saved.items() if k != "features"},
            "DC2d": saved["features"]}


@pytest.mark.parametrize("case", ["DC2", "DC2b", "DC2c", "DC2d", "DC3"])
def test_a_feature_cache_that_is_not_what_is_asked_is_refused_in_one_line(eval_runs, tmp_path,
                                                                          case):
    """A cache of the wrong shape, without features, a bare tensor (tracebacks), of NaN
    features (10% with no word), or the train and test caches swapped (a wrong kNN with no
    word): each is checked against what it records and what is asked, and refused naming it."""
    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run, ignore=shutil.ignore_patterns("eval", "cache"))
    train, val = labelled_sets(eval_runs["train"], eval_runs["val"])
    encoder = Encoder.from_run(run)
    options = EncodeOptions(num_workers=0)
    files = {}
    for images in (train, val):
        encoder.encode(images, options=options)
        files[images.split] = run / "cache" / "features" / f"{encoder.cache_key(images)}.pt"
    cache = files["train"]
    if case == "DC3":
        swap = cache.with_suffix(".swap")
        cache.rename(swap)
        files["val"].rename(cache)
        swap.rename(files["val"])
        said = "holds the features of toy/val (key "
    else:
        torch.save(_damaged_caches(torch.load(cache))[case], cache)
        said = {"DC2": "holds features of shape (7, 3) where (24, 512) are asked",
                "DC2b": "holds features that are not finite numbers",
                "DC2c": "holds no `features` tensor", "DC2d": "holds no `features` tensor"}[case]
    with pytest.raises(MixDiffError) as refused:
        encoder.encode(train, options=options)
    assert f"feature cache {cache} {said}" in str(refused.value), refused.value
    assert "delete it: the features are computed again" in str(refused.value)
    assert "\n" not in str(refused.value)
    result = _cli("knn", "--run", run, "--train", eval_runs["train"], "--val", eval_runs["val"],
                  "--device", "cpu", "--num-workers", "0")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_encoding_in_loader_workers_matches_and_names_a_broken_image(eval_runs, tmp_path):
    root = make_tree(tmp_path / "set" / "test", 2, seed=6)
    images = ImageSet.from_tree(root)
    encoder = Encoder.from_run(eval_runs["simclr"])
    inline = encoder._encode(images, None, EncodeOptions(4, 0, False))
    assert torch.equal(encoder._encode(images, None, EncodeOptions(4, 2, False)), inline)
    (root / "square" / "img00.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*square/img00\.png"):
        encoder.encode(ImageSet.from_tree(root), options=EncodeOptions(num_workers=2))


# --- kNN ---------------------------------------------------------------------------------------
def test_knn_votes_for_several_k_in_one_pass():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    votes = weighted_knn_votes(bank, labels, queries, 3, ks=(1, 3, 5), temperature=0.1)
    assert votes[1].argmax(1).tolist() == [0, 1]
    for k in (1, 3, 5):  # each k equals a search with that k alone
        alone = weighted_knn_votes(bank, labels, queries, 3, ks=(k,), temperature=0.1)[k]
        assert torch.allclose(votes[k], alone)
    # k=1 votes only for the nearest neighbour's class; k=5 for all of them
    assert (votes[1] > 0).sum().item() == 2 and (votes[5] > 0).all()
    assert knn_accuracy(bank, labels, queries, torch.tensor([0, 1]), 3, k=3) == 1.0


# --- the L-BFGS weight-decay sweep --------------------------------------------------------------
def _sweep(x, y, x_val, y_val, classes, settings=LogisticSettings()):
    fit, held = stratified_holdout(y.numpy(), settings.heldout_fraction)
    fitted = select_and_fit(x[fit], y[fit], x[held], y[held], x, y, classes, "top1", settings,
                            torch.device("cpu"))
    top1 = (fitted.classifier.logits(x_val).argmax(1) == y_val).float().mean().item()
    return fitted, top1


def test_sweep_picks_heavy_decay_for_few_noisy_samples_and_light_for_many_clean():
    gen = torch.Generator().manual_seed(0)
    # two Gaussian classes whose means differ a little along every one of 500 dimensions, 400
    # samples: light decay fits the noise; heavy decay tends to the class-mean difference, the
    # best direction here
    shift = torch.full((500,), 1.2 / 500 ** 0.5)

    def noisy(n):
        y = torch.randint(0, 2, (n,), generator=gen)
        return torch.randn(n, 500, generator=gen) + shift * (2 * y - 1)[:, None], y
    x, y = noisy(400)
    x_val, y_val = noisy(2000)
    fitted, top1 = _sweep(x, y, x_val, y_val, 2)
    assert fitted.sweep.best_weight_decay >= 0.3, fitted.sweep.record()
    light = _sweep(x, y, x_val, y_val, 2, LogisticSettings(grid_log10=(-6, -6, 1)))[1]
    assert top1 > light + 0.03, (top1, light)
    # many samples, few dimensions, labels a deterministic linear function: the lighter the
    # decay the sharper the boundary
    w = torch.randn(10, 5, generator=gen)

    def clean(n):
        x = torch.randn(n, 10, generator=gen)
        return x, (x @ w).argmax(1)
    fitted, top1 = _sweep(*clean(3000), *clean(2000), 5)
    assert fitted.sweep.best_weight_decay <= 1e-3, fitted.sweep.record()
    assert top1 > 0.97
    scores = [p.score for p in fitted.sweep.points]
    assert scores[0] < 0.5 < scores[-1]  # heaviest first: near-constant logits


def test_equal_heldout_scores_are_told_apart_by_the_heldout_loss():
    """A few held-out images score 100% at every decay of a plateau; the heaviest decay there
    leaves near-constant logits, which the held-out cross-entropy sees and accuracy does not."""
    gen = torch.Generator().manual_seed(1)
    centres = 6 * torch.eye(3, 20)

    def separable(n):
        y = torch.arange(n) % 3
        return centres[y] + torch.randn(n, 20, generator=gen), y
    settings = LogisticSettings(grid_log10=(-3.0, 2.0, 11), patience=20)
    sweep = sweep_weight_decay(*separable(60), *separable(9), 3, "top1", settings)
    assert all(p.score == 1.0 for p in sweep.points)  # a plateau: accuracy cannot choose
    assert sweep.best_weight_decay < 1.0, sweep.record()
    assert sweep.chosen.heldout_loss == min(p.heldout_loss for p in sweep.points)
    assert sweep.chosen.heldout_loss < sweep.points[0].heldout_loss / 3


def test_linear_chooses_by_the_heldout_loss_where_the_score_is_noise():
    """30 held-out images: the top-1 moves in steps of 3.3 points and peaks by chance; `eval
    linear` chooses by the held-out cross-entropy (LINEAR_SETTINGS), transfer by the score."""
    from mixdiff.evaluate.linear import LINEAR_SETTINGS

    gen = torch.Generator().manual_seed(3)
    means = torch.randn(10, 64, generator=gen) * 0.35

    def sample(n):
        y = torch.arange(n) % 10
        return means[y] + torch.randn(n, 64, generator=gen), y
    train, held = sample(200), sample(30)
    grid = dict(grid_log10=(-4.0, 2.0, 13), patience=20)
    by_score = sweep_weight_decay(*train, *held, 10, "top1", LogisticSettings(**grid))
    by_loss = sweep_weight_decay(*train, *held, 10, "top1",
                                 replace(LINEAR_SETTINGS, **grid))
    assert LINEAR_SETTINGS.select_by == "heldout_loss"
    losses = [p.heldout_loss for p in by_loss.points]
    assert by_loss.chosen.heldout_loss == min(losses)
    assert by_score.chosen.score == max(p.score for p in by_score.points)
    assert by_score.best_weight_decay != by_loss.best_weight_decay  # they disagree here
    assert "chosen by the held-out cross-entropy" not in str(by_score.record())
    assert by_loss.record()["chosen_by"].startswith("the held-out cross-entropy")


def test_stratified_holdout_is_seeded_and_keeps_every_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
    fit, held = stratified_holdout(labels, 0.2, seed=0)
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(18))
    assert np.bincount(labels[held], minlength=4).tolist() == [2, 1, 1, 0]
    assert np.array_equal(held, stratified_holdout(labels, 0.2, seed=0)[1])
    assert not np.array_equal(held, stratified_holdout(labels, 0.2, seed=1)[1])


def test_mean_per_class_accuracy_weights_classes_equally():
    scores = torch.eye(3)[[0, 0, 0, 0, 1, 0]]  # predicts 0,0,0,0,1,0
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    assert mean_per_class_accuracy(scores, labels) == pytest.approx((1 + 1 + 0) / 3)


# --- end to end on a run -------------------------------------------------------------------------
def test_knn_and_linear_probe_are_well_above_chance(eval_runs):
    run = RunDir(eval_runs["dino"])
    train, val = labelled_sets(eval_runs["train"], eval_runs["val"])
    encoder = Encoder.from_run(run)
    knn = read_result(knn_eval(encoder, train, val, ks=(5, 20),
                               options=EncodeOptions(num_workers=0)))
    linear = read_result(linear_eval(encoder, train, val, options=EncodeOptions(num_workers=0)))
    chance = 1 / 3
    assert knn["top1"] >= 0.7 > chance and linear["top1"] >= 0.7, (knn, linear)
    for command, result in (("knn", knn), ("linear", linear)):
        saved = json.loads(run.eval_result(command, "toy").read_text())
        assert set(REQUIRED) <= set(saved) and saved["online"] is False
        assert (saved["dataset"], saved["split"], saved["classes"], saved["images"]) == \
            ("toy", "val", 3, 18)
        assert saved["weights"] == "teacher" and saved["value"] == saved["top1"]
        assert saved["checkpoint"]["sha256"] == encoder.checkpoint_sha256
        assert "top5" not in saved  # 3 classes: top-5 means nothing
    assert set(knn["details"]["per_k"]) == {"5", "20"}
    assert knn["top1"] == knn["details"]["per_k"]["5"]["top1"]
    points = linear["details"]["weight_decay_sweep"]["points"]
    assert linear["details"]["weight_decay"] in [p["weight_decay"] for p in points]
    # the saved probe reproduces the score, and a second call gives the same numbers
    probe = load_probe(run, "toy", "teacher")
    assert probe.classes == train.classes and probe.dataset == "toy"
    features = encoder.encode(val, options=EncodeOptions(num_workers=0))
    top1 = (probe.logits(features).argmax(1).numpy() == val.labels).mean()
    assert top1 == pytest.approx(linear["top1"])
    assert read_result(linear_eval(encoder, train, val,
                                   options=EncodeOptions(num_workers=0)))["top1"] == linear["top1"]


def test_load_probe_refuses_other_weights_checkpoints_and_ambiguity(eval_runs, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(eval_runs["dino"], run.root, ignore=shutil.ignore_patterns("eval", "cache"))
    with pytest.raises(RunDirError, match=r"no linear probe: run `mixdiff eval linear --run"):
        load_probe(run)
    train, val = labelled_sets(eval_runs["train"], eval_runs["val"])
    student = Encoder.from_run(run, weights="student")
    linear_eval(student, train, val, options=EncodeOptions(num_workers=0))
    assert run.probe("toy-student").is_file()  # not the default weights: its own name
    with pytest.raises(RunDirError, match="fitted on the student weights, not the teacher"):
        load_probe(run, "toy-student", weights="teacher")
    linear_eval(Encoder.from_run(run), train, val, options=EncodeOptions(num_workers=0))
    with pytest.raises(RunDirError, match=r"2 linear probes \(toy-student, toy\).*--probe"):
        load_probe(run)
    assert load_probe(run, "toy").weights == "teacher"
    saved = torch.load(run.last_checkpoint, weights_only=False)
    saved["global_step"] += 1
    torch.save(saved, run.last_checkpoint)
    with pytest.raises(RunDirError, match="another checkpoint .* fit it again"):
        load_probe(run, "toy")


def test_probe_round_trips(tmp_path):
    probe = LinearProbe(torch.randn(3, 4), torch.randn(3), torch.randn(4), torch.rand(4) + 0.5,
                        ("a", "b", "c"), 1e-3, "toy", "student", "ab" * 32, {"k": [1, 2]})
    probe.save(tmp_path / "p.probe.pt")
    loaded = LinearProbe.load(tmp_path / "p.probe.pt")
    x = torch.randn(5, 4)
    assert torch.equal(loaded.logits(x), probe.logits(x)) and loaded.classes == probe.classes
    assert loaded.settings == {"k": [1, 2]}


def test_write_result_checks_fields_and_stamps(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match="lacks"):
        write_result(run, "knn", "x", {"top1": 0.5})
    result = {key: 0 for key in REQUIRED}
    path = write_result(run, "knn", "x", result)
    saved = json.loads(path.read_text())
    assert path == tmp_path / "eval" / "knn" / "x.json"
    assert saved["mixdiff_version"] and saved["created"].endswith("+00:00")


# --- the command line ----------------------------------------------------------------------------
def _cli(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def test_cli_knn_and_linear_on_two_runs(eval_runs):
    trees = ["--train", eval_runs["train"], "--val", eval_runs["val"], "--device", "cpu",
             "--num-workers", "0"]
    knn = _cli("knn", "--run", eval_runs["dino"], "--run", eval_runs["simclr"], "--k", 3,
               "--name", "toy-cli", *trees)
    assert knn.exit_code == 0, knn.output
    for run in ("dino", "simclr"):
        saved = json.loads((eval_runs[run] / "eval" / "knn" / "toy-cli.json").read_text())
        assert saved["settings"]["k"] == [3] and saved["protocol"].startswith(
            "offline weighted kNN (cosine, k=3, T=0.07)")
        assert f"{saved['value']:.2%}" in knn.output
    linear = _cli("linear", "--run", eval_runs["simclr"], "--name", "toy-cli", *trees)
    assert linear.exit_code == 0, linear.output
    assert (eval_runs["simclr"] / "eval" / "linear" / "toy-cli.probe.pt").is_file()


@pytest.mark.parametrize("case", ["not_a_run", "teacher", "classes", "empty", "k"])
def test_cli_errors_are_one_line(eval_runs, tmp_path, case):
    train, val = eval_runs["train"], eval_runs["val"]
    run, extra = eval_runs["simclr"], []
    if case == "not_a_run":
        run, expected = tmp_path, "is not a `mixdiff pretrain` run folder"
    elif case == "teacher":
        extra, expected = ["--weights", "teacher"], "has no teacher weights"
    elif case == "classes":
        val = make_tree(tmp_path / "other" / "val", 1, classes=("circle", "square"))
        expected = "only in the train tree: ['stripes']"
    elif case == "empty":
        val = tmp_path / "empty"
        val.mkdir()
        expected = "no images found under"
    else:
        extra, expected = ["--k", "0"], "--k must be at least 1, not [0]"
    result = _cli("knn", "--run", run, "--train", train, "--val", val, "--num-workers", 0,
                  *extra)
    assert result.exit_code == 2 and expected in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command, option, value, expected", [
    ("knn", "--batch-size", 0, "--batch-size must be at least 1, not 0"),
    ("knn", "--num-workers", -1, "--num-workers must be at least 0, not -1"),
    ("knn", "--k", 0, "--k must be at least 1, not [0]"),
    ("knn", "--temperature", "inf", "--temperature must be a finite number, not inf"),
    ("knn", "--temperature", 0, "--temperature must be positive, not 0.0"),
    ("linear", "--batch-size", -5, "--batch-size must be at least 1, not -5"),
    ("transfer", "--batch-size", 0, "--batch-size must be at least 1, not 0"),
    ("robustness", "--num-workers", -2, "--num-workers must be at least 0, not -2"),
])
def test_eval_numbers_are_checked_before_any_work(tmp_path, command, option, value, expected):
    """`eval knn --batch-size 0` raised torch's ValueError, and passed without a word when the
    feature cache was warm: every number is refused before a run, a tree or a cache is read
    (here none of them exists)."""
    given = {"knn": ["--train", tmp_path / "t", "--val", tmp_path / "v"],
             "linear": ["--train", tmp_path / "t", "--val", tmp_path / "v"],
             "transfer": ["--dataset", "cifar10", "--root", tmp_path / "r"],
             "robustness": ["--suite", "corruptions", "--root", tmp_path / "r"]}[command]
    result = _cli(command, "--run", tmp_path / "no-run", *given, option, value)
    assert result.exit_code == 2 and result.output.strip() == f"error: {expected}"


def test_a_run_still_training_gives_a_result_marked_early(eval_runs, tmp_path):
    """`eval` of a run that `mixdiff pretrain` still trains said nothing, and `report` put that
    early result beside later numbers, unmarked. Now eval warns (of which epoch), the result
    records it, and the report says so beside it; once the run is done, nothing is said."""
    from mixdiff.lock import exclusive
    from mixdiff.report.build import write_report

    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run)
    shutil.rmtree(run / "eval", ignore_errors=True)
    args = ["--run", run, "--train", eval_runs["train"], "--val", eval_runs["val"], "--device",
            "cpu", "--num-workers", "0"]
    with exclusive(run, "mixdiff pretrain"):  # as the training process holds it
        early = _cli("knn", *args)
    said = " ".join(early.output.split())
    assert early.exit_code == 0, early.output
    assert f"warning: {run} is still being trained (`mixdiff pretrain` (pid" in said
    assert "this result is of epoch 1 of 1 and will be out of date" in said
    result = json.loads((run / "eval" / "knn" / "toy.json").read_text())
    unfinished = result["checkpoint"]["unfinished"]
    assert (unfinished["epoch"], unfinished["max_epochs"]) == (1, 1)
    notes = write_report([run], tmp_path / "report").notes
    assert any("toy.json is of epoch 1 of 1, made while the run was still training" in note
               for note in notes)

    done = _cli("knn", *args)  # the run has finished: the same measurement replaces it
    assert done.exit_code == 0 and "still being trained" not in done.output
    assert "unfinished" not in json.loads((run / "eval" / "knn" / "toy.json").read_text())[
        "checkpoint"]
    assert not any("still training" in note for note in
                   write_report([run], tmp_path / "report2").notes)


def test_evaluations_whose_number_means_something_else_are_warned_about(tmp_path):
    from mixdiff.evaluate.features import evaluation_warnings, labelled_sets

    train = make_tree(tmp_path / "d" / "train", 3)
    val = make_tree(tmp_path / "d" / "val", 2, seed=1)
    train_set, _ = labelled_sets(train, val)
    assert evaluation_warnings(train, val, train_set, ks=(5,)) == []
    same = evaluation_warnings(train, train, train_set)
    assert len(same) == 1 and "the same tree" in same[0]
    assert any("votes with all 9" in n for n in evaluation_warnings(train, val, train_set, (20,)))
    one = make_tree(tmp_path / "one" / "train", 3, classes=("only",))
    one_set, _ = labelled_sets(one, one)
    assert any("has one class (only)" in n for n in evaluation_warnings(one, one, one_set))


def test_a_shell_glob_of_runs_is_taken_whole(eval_runs, tmp_path):
    """`--run runs/*` reaches the command as one --run and the rest as extra arguments."""
    result = CliRunner().invoke(app, [
        "eval", "knn", "--run", str(eval_runs["simclr"]), str(eval_runs["dino"]),
        "--train", str(eval_runs["train"]), "--val", str(eval_runs["val"]), "--device", "cpu",
        "--num-workers", "0", "--name", "glob"])
    assert result.exit_code == 0, result.output
    assert all((eval_runs[name] / "eval" / "knn" / "glob.json").is_file()
               for name in ("simclr", "dino"))


def test_a_result_that_measured_something_else_is_not_replaced(eval_runs, tmp_path):
    """eval knn/linear of another --val, --train or --k under the same result name is refused
    before any work (the report would show the new number as the old); --name keeps both, and
    the same measurement again replaces it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run)
    shutil.rmtree(run / "eval", ignore_errors=True)
    trees = ["--train", eval_runs["train"], "--device", "cpu", "--num-workers", "0"]
    first = _cli("knn", "--run", run, *trees, "--val", eval_runs["val"])
    assert first.exit_code == 0, first.output
    kept = (run / "eval" / "knn" / "toy.json").read_bytes()
    for changed in (["--val", eval_runs["train"]], ["--val", eval_runs["val"], "--k", 3]):
        refused = _cli("knn", "--run", run, *trees, *changed)
        said = " ".join(refused.output.split())
        assert refused.exit_code == 2 and "measured something else" in said, refused.output
        assert "--name" in said and (run / "eval" / "knn" / "toy.json").read_bytes() == kept
    both = _cli("knn", "--run", run, *trees, "--val", eval_runs["train"], "--name", "on-train")
    assert both.exit_code == 0 and (run / "eval" / "knn" / "on-train.json").is_file()
    again = _cli("knn", "--run", run, *trees, "--val", eval_runs["val"])
    assert again.exit_code == 0, again.output
    linear = _cli("linear", "--run", run, *trees, "--val", eval_runs["val"])
    assert linear.exit_code == 0, linear.output
    probe = (run / "eval" / "linear" / "toy.probe.pt").read_bytes()
    other = _cli("linear", "--run", run, *trees, "--val", eval_runs["train"])
    assert other.exit_code == 2 and "measured something else" in " ".join(other.output.split())
    assert (run / "eval" / "linear" / "toy.probe.pt").read_bytes() == probe  # nothing written


def test_a_result_of_the_same_val_tree_holding_other_images_is_not_replaced(eval_runs,
                                                                              tmp_path):
    """EV-valchg: the same `eval knn` after 2 images were deleted from --val silently replaced
    the 12-image result with a 10-image one. Refused like another --val; --name keeps both."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run, copy_function=os.link)
    val = tmp_path / "toy" / "val"
    shutil.copytree(eval_runs["val"], val)
    trees = ["--train", eval_runs["train"], "--val", val, "--device", "cpu", "--num-workers", "0"]
    for command in ("knn", "linear"):
        assert _cli(command, "--run", run, *trees, "--name", "v").exit_code == 0
    kept = {c: (run / "eval" / c / "v.json").read_bytes() for c in ("knn", "linear")}
    for image in sorted(val.rglob("*.png"))[:2]:
        image.unlink()
    for command in ("knn", "linear"):
        refused = _cli(command, "--run", run, *trees, "--name", "v")
        said = " ".join(refused.output.split())
        assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, said
        assert "the images scored: 18 (sha256" in said and "-> 16 (sha256" in said, said
        assert "give --name NAME to keep both, or delete that result" in said
        assert (run / "eval" / command / "v.json").read_bytes() == kept[command]
    assert _cli("knn", "--run", run, *trees, "--name", "v16").exit_code == 0


def test_a_result_of_the_same_train_tree_holding_other_images_is_not_replaced(eval_runs,
                                                                                tmp_path):
    """EV-trainchg: the same `eval knn` / `eval linear` after an image was added to --train
    silently replaced the result (bank_images 24 -> 25). Refused like a changed --val, naming
    what changed; --name keeps both; the same images again replace it."""
    import shutil

    from PIL import Image

    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run, copy_function=os.link)
    train = tmp_path / "toy" / "train"
    shutil.copytree(eval_runs["train"], train)
    trees = ["--train", train, "--val", eval_runs["val"], "--device", "cpu", "--num-workers", "0"]
    for command in ("knn", "linear"):
        assert _cli(command, "--run", run, *trees, "--name", "t").exit_code == 0
    kept = {c: (run / "eval" / c / "t.json").read_bytes() for c in ("knn", "linear")}
    first = sorted(train.rglob("*.png"))[0]
    Image.open(first).save(first.with_name("added.png"))
    for command in ("knn", "linear"):
        refused = _cli(command, "--run", run, *trees, "--name", "t")
        said = " ".join(refused.output.split())
        assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, said
        assert "the training images: 25 images where there were 24; 1 image(s) added in " \
            f"{first.parent.name}" in said, said
        assert "give --name NAME to keep both, or delete that result" in said
        assert (run / "eval" / command / "t.json").read_bytes() == kept[command]
    assert _cli("knn", "--run", run, *trees, "--name", "t25").exit_code == 0
    first.with_name("added.png").unlink()
    assert _cli("knn", "--run", run, *trees, "--name", "t").exit_code == 0
