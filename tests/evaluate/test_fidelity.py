"""Fidelity of a synthetic root: twins that are copies keep every class the probe sees in the real
images and no pixel changes; twins drawn from another class lose the class."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.evaluate.features import Encoder, ImageSet
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.linear import linear_eval
from mixdiff.pretrain.train import pretrain

from conftest import make_tree, tiny_overrides


@pytest.fixture(scope="module")
def judged(tiny_data, tmp_path_factory):
    """A real tree, a run with a linear probe fitted on it, and two synthetic roots."""
    base = tmp_path_factory.mktemp("fidelity")
    real = make_tree(base / "real", per_class=6)
    run = pretrain(load_config(None, tiny_overrides(tiny_data, **{
        "data.real": real, "data.mode": "real", "trainer.max_epochs": 2})), base / "run")
    images = ImageSet.from_tree(real, name="toy")
    linear_eval(Encoder.from_run(run), images, images, options=EncodeOptions(show_progress=False))
    copies = shutil.copytree(real, base / "copies")
    # the twin of circle/imgNN is a square, of square/imgNN a stripes image, ...
    swapped = make_tree(base / "swapped", per_class=6, classes=("square", "stripes", "circle"))
    return {"real": real, "run": run, "copies": copies, "swapped": swapped}


def test_fidelity_of_copies_and_of_class_swapped_twins(judged):
    result = CliRunner().invoke(app, [
        "data", "verify", "--real", str(judged["real"]), "--synthetic", str(judged["copies"]),
        "--synthetic", str(judged["swapped"]), "--fidelity", str(judged["run"]), "--json",
        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    copies, swapped = (entry["fidelity"] for entry in json.loads(result.stdout)["synthetic"])
    assert copies["twins"] == swapped["twins"] == 18
    assert copies["mean_abs_pixel_difference"] == 0.0
    assert copies["class_agreement"] == copies["real_accuracy"] > 0.8
    assert swapped["mean_abs_pixel_difference"] > 0.05
    assert swapped["class_agreement"] < 0.5  # the classifier sees the other class
    assert set(swapped["class_agreement_per_class"]) == {"circle", "square", "stripes"}
    assert swapped["classifier"]["probe"] == "toy"


def test_fidelity_needs_a_probe(tiny_data, judged, tmp_path):
    run = pretrain(load_config(None, tiny_overrides(tiny_data, **{
        "data.real": judged["real"], "data.mode": "real"})), tmp_path / "no-probe")
    result = CliRunner().invoke(app, ["data", "verify", "--real", str(judged["real"]),
                                      "--synthetic", str(judged["copies"]), "--fidelity",
                                      str(run)])
    assert result.exit_code == 2
    assert "has no linear probe" in result.output and "mixdiff eval linear" in result.output


def test_twin_scores_list_every_twin_once(judged, tmp_path):
    """`--scores FILE.csv`: one row per twin of every root; a copy keeps its class with
    similarity 1, a twin of another class mostly loses it and is less similar."""
    import csv

    scores = tmp_path / "scores.csv"
    result = CliRunner().invoke(app, [
        "data", "verify", "--real", str(judged["real"]), "--synthetic", str(judged["copies"]),
        "--synthetic", str(judged["swapped"]), "--fidelity", str(judged["run"]), "--device",
        "cpu", "--scores", str(scores)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(scores.open()))
    assert list(rows[0]) == ["twin", "real", "root", "class_kept", "similarity"]
    assert len(rows) == 36 and len({r["twin"] for r in rows}) == 36  # 18 twins x 2 roots
    copies = [r for r in rows if r["root"] == str(judged["copies"])]
    swapped = [r for r in rows if r["root"] == str(judged["swapped"])]
    assert len(copies) == len(swapped) == 18
    assert all(float(r["similarity"]) == pytest.approx(1.0, abs=1e-5) for r in copies)
    assert {Path(r["twin"]).relative_to(judged["copies"]) for r in copies} == \
        {Path(r["real"]).relative_to(judged["real"]) for r in copies}
    kept = sum(int(r["class_kept"]) for r in swapped)
    assert kept < 9 and max(float(r["similarity"]) for r in swapped) < 0.9999
    # the summary's agreement is the rows' mean
    summary = json.loads(CliRunner().invoke(app, [
        "data", "verify", "--real", str(judged["real"]), "--synthetic", str(judged["swapped"]),
        "--fidelity", str(judged["run"]), "--json", "--device", "cpu"]).stdout)
    assert summary["synthetic"][0]["fidelity"]["class_agreement"] == pytest.approx(kept / 18)
    refused = CliRunner().invoke(app, ["data", "verify", "--real", str(judged["real"]),
                                       "--scores", str(tmp_path / "x.csv")])
    assert refused.exit_code == 2 and "--scores needs --fidelity" in refused.output
