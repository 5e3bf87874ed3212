"""Per-image predictions beside every result, and the fingerprint of the images it scored."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_tree

from mixdiff.errors import RunDirError
from mixdiff.evaluate.features import Encoder, labelled_sets
from mixdiff.evaluate.knn import knn_eval
from mixdiff.evaluate.linear import linear_eval
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.predictions import (CLEAN, Predictions, per_image_scores, predictions_of,
                                          read_predictions, write_predictions)
from mixdiff.evaluate.results import read_result
from mixdiff.evaluate.robustness import SUITES, robustness_eval

QUIET = EncodeOptions(num_workers=0, show_progress=False)


@pytest.fixture(scope="module")
def scored(eval_runs, tmp_path_factory):
    """A copy of the tiny SimCLR run, scored by linear, kNN and two corruptions."""
    run = tmp_path_factory.mktemp("predictions") / "run"
    shutil.copytree(eval_runs["simclr"], run, ignore=shutil.ignore_patterns("eval", "cache"))
    encoder = Encoder.from_run(run, device="cpu")
    train, val = labelled_sets(eval_runs["train"], eval_runs["val"])
    paths = {"linear": linear_eval(encoder, train, val, options=QUIET),
             "knn": knn_eval(encoder, train, val, ks=(3, 5), options=QUIET)}
    suite = SUITES["corruptions"]
    paths["robustness"], _, _ = robustness_eval(encoder, suite, suite.scan(eval_runs["val"]),
                                                corruptions=("gaussian_noise", "sketch"),
                                                severities=(2, 4), options=QUIET)
    return run, paths, val


def test_each_result_keeps_every_scored_images_prediction(scored):
    run, paths, val = scored
    names = sorted(f"{c}/img{i:02d}.png" for c in ("circle", "square", "stripes") for i in range(6))
    for command, path in paths.items():
        result = read_result(path)
        kept = predictions_of(path)
        # in the result's own folder, one level down: the report never reads it as a result
        assert path.parent / result["predictions"] == \
            run / "eval" / command / path.stem / "predictions.npz"
        assert sorted(kept.images) == names and len(kept.images) == result["images"]
        assert kept.classes == ("circle", "square", "stripes")
        labels = [kept.classes.index(name.split("/")[0]) for name in kept.images]
        assert kept.labels.tolist() == labels
        assert (kept.correct == (kept.predicted == kept.labels[None])).all()
    linear, knn, shifted = (predictions_of(paths[c]) for c in ("linear", "knn", "robustness"))
    # the result's numbers are the means of its images' correctness
    assert linear.conditions == (CLEAN,)
    assert read_result(paths["linear"])["top1"] == pytest.approx(linear.correct.mean())
    per_k = read_result(paths["knn"])["details"]["per_k"]
    assert knn.conditions == ("k=3", "k=5")
    assert [per_k[k]["top1"] for k in ("3", "5")] == pytest.approx(knn.correct.mean(1).tolist())
    result = read_result(paths["robustness"])
    assert shifted.conditions == ("clean", "gaussian_noise/2", "gaussian_noise/4",
                                  "sketch/single")
    grid = result["details"]["top1_by_corruption"]
    assert grid["gaussian_noise"]["4"] == pytest.approx(
        shifted.correct_of("gaussian_noise/4").mean())
    assert result["details"]["clean_top1"] == pytest.approx(shifted.correct_of(CLEAN).mean())
    # each image's share of the headline number: their mean is the result's value
    for path in paths.values():
        result = read_result(path)
        assert per_image_scores(result, predictions_of(path)).mean() == \
            pytest.approx(result["value"])
    # the clean images: the same probe on the same features as the linear result
    assert dict(zip(shifted.images, shifted.predicted[0])) == \
        dict(zip(linear.images, linear.predicted[0]))


def test_the_fingerprint_names_the_images_by_content_not_place(scored, tmp_path):
    run, paths, val = scored
    fingerprint = read_result(paths["linear"])["images_sha256"]
    assert fingerprint == read_result(paths["knn"])["images_sha256"] == \
        read_result(paths["robustness"])["images_sha256"] == val.content_sha256()
    copy = shutil.copytree(val.root, tmp_path / "elsewhere" / "val")
    _, moved = labelled_sets(copy, copy)
    assert moved.content_sha256() == fingerprint  # the same images in another folder pair

    one = next(copy.rglob("*.png"))
    one.write_bytes(one.read_bytes() + b"\0")  # one byte more in one image
    assert labelled_sets(copy, copy)[1].content_sha256() != fingerprint
    other = tmp_path / "renamed"
    shutil.copytree(val.root, other)
    (other / "circle" / "img00.png").rename(other / "circle" / "img99.png")
    assert labelled_sets(other, other)[1].content_sha256() != fingerprint


def test_a_damaged_or_missing_predictions_file_is_one_line(tmp_path):
    path = tmp_path / "predictions.npz"
    with pytest.raises(RunDirError, match="is missing"):
        read_predictions(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(RunDirError, match="cannot be read as per-image predictions"):
        read_predictions(path)
    # an object array would need pickle to load: refused, nothing in the file runs
    np.savez(path, images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(RunDirError, match="cannot be read") as error:
        read_predictions(path)
    assert "\n" not in str(error.value)
    fine = Predictions.single(["a/1.png", "b/2.png"], ["a", "b"], np.array([0, 1]),
                              {CLEAN: np.array([0, 0])})
    write_predictions(path, fine)
    again = read_predictions(path)
    assert again.images == fine.images and again.correct.tolist() == [[True, False]]


def test_a_result_made_before_predictions_were_kept_says_so(scored, tmp_path):
    _, paths, _ = scored
    result = read_result(paths["knn"])
    del result["predictions"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(result))
    with pytest.raises(RunDirError, match="without per-image predictions"):
        predictions_of(old)


def test_multi_label_images_are_right_on_any_of_their_targets():
    targets = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    kept = Predictions.of_targets(["x", "y", "z"], ["a", "b", "c"], targets,
                                  {CLEAN: np.array([0, 2, 1])})
    assert kept.correct.tolist() == [[True, True, False]]
    assert kept.labels.tolist() == [0, 1, -1]
