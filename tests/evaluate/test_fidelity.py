"""Fidelity of a synthetic root: twins that are copies keep every class the probe sees in the real
images and no pixel changes; twins drawn from another class lose the class."""

import json
import shutil

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
