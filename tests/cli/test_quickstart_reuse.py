"""The quickstart reuses (or resumes) a run of its --out only when it was made with the settings
this call asks, on the training images its tree holds now; otherwise one line says which run,
what differs and what to do. Fast: a tiny run stands for the quickstart's (the whole quickstart
is tests/cli/test_quickstart.py, slow)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from mixdiff.config import load_config
from mixdiff.data.tree import fingerprint
from mixdiff.errors import MixDiffError
from mixdiff.quickstart import refuse_another_run
from mixdiff.runs import RunDir

from conftest import make_tree, tiny_overrides


@pytest.fixture
def run(eval_runs, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], copy, copy_function=os.link)
    return RunDir(copy)


def test_a_run_of_more_epochs_than_asked_is_refused_not_mixed(run, tiny_data):
    """Q5: after `--epochs 2 --modes real`, a default `--epochs 1` call compared the 2-epoch
    real run with 1-epoch runs."""
    train = tiny_data["real"]
    refuse_another_run(run, load_config(None, tiny_overrides(tiny_data)), train)  # the same
    refuse_another_run(run, load_config(None, tiny_overrides(  # more: resumed, as pretrain does
        tiny_data, **{"trainer.max_epochs": 3})), train)
    for changed, said, option in (
            ({"trainer.max_epochs": 0}, "trainer.max_epochs: 1 -> 0", "(--epochs)"),
            ({"optim.lr": 0.1}, "optim.lr: 0.0005 -> 0.1", "(the preset: --fast or not")):
        with pytest.raises(MixDiffError) as refused:
            refuse_another_run(run, load_config(None, tiny_overrides(tiny_data, **changed)),
                               train)
        message = str(refused.value)
        assert f"{run.root} was made with other settings than this call asks ({said}" in message
        assert "use another --out" in message and option in message and "\n" not in message


def test_a_run_trained_on_other_images_is_refused_not_reused(run, tiny_data, tmp_path):
    """Q2: `--per-class 3` after a run with 4 reused the runs trained on 4 per class (pretrain
    would refuse the changed tree, but a finished run never reached it)."""
    fewer = make_tree(tmp_path / "fewer", per_class=5)  # one image per class less
    summary = json.loads(run.data_summary.read_text())
    assert summary["fingerprints"]["data.real"] == fingerprint(tiny_data["real"])
    with pytest.raises(MixDiffError) as refused:
        refuse_another_run(run, load_config(None, tiny_overrides(tiny_data)), fewer)
    message = " ".join(str(refused.value).split())
    assert "the training images: 15 images where there were 18" in message
    assert "(--per-class)" in message


def test_a_result_of_other_training_images_is_not_current(tmp_path):
    """A quickstart result whose recorded training images differ from the tree's now is
    evaluated again, not reused (`mixdiff eval` would refuse to replace it); one from before
    they were recorded is taken as it is."""
    from mixdiff.quickstart import _current

    run = RunDir(tmp_path / "run")
    train = make_tree(tmp_path / "train", per_class=1)
    before = fingerprint(train)
    result = run.eval_result("knn", "toy")
    result.parent.mkdir(parents=True)
    (result.parent / "toy").mkdir()
    (result.parent / "toy" / "predictions.npz").write_bytes(b"")
    record = {"checkpoint": {"sha256": None}, "images_sha256": "abc",
              "predictions": "toy/predictions.npz", "settings": {"train_fingerprint": before}}
    result.write_text(json.dumps(record))
    assert _current(run, "knn", "toy", None, "abc", before)
    make_tree(train, per_class=2)  # an image more in every class
    assert not _current(run, "knn", "toy", None, "abc", fingerprint(train))
    del record["settings"]["train_fingerprint"]
    result.write_text(json.dumps(record))
    assert _current(run, "knn", "toy", None, "abc", fingerprint(train))
