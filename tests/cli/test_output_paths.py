"""An output path that cannot be written (a file where a folder is wanted, a path under a file, a
folder where a file is wanted) is one line naming the path, for every command that writes;
never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.pretrain.train import pretrain

from conftest import make_tree, tiny_overrides

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tiny_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("outputs")
    run = pretrain(load_config(None, tiny_overrides(tiny_data)), base / "run")
    a_file = base / "a-file.txt"
    a_file.write_text("not a folder\n")
    a_folder = base / "a-folder"
    a_folder.mkdir()
    return {"run": run, "data": tiny_data, "file": a_file, "folder": a_folder}


def _commands(inputs, out):
    data, run = inputs["data"], inputs["run"]
    return {
        "pretrain": ["pretrain", *tiny_overrides(data), "--out", out],
        "report": ["report", str(run), "--out", out],
        "export": ["export", "--run", str(run), "--out", out],
        "data grid": ["data", "grid", "--real", str(data["real"]), "--synthetic",
                      str(data["syn0"]), "--out", out],
    }


FOLDER_OUTPUTS = ("pretrain", "report")  # the others write one file


@pytest.mark.parametrize("command", ["pretrain", "report", "export", "data grid"])
def test_an_unwritable_out_is_one_line_naming_it(inputs, command):
    bad = [str(inputs["file"] / "below")]  # under a file: never writable
    bad.append(str(inputs["file"]) if command in FOLDER_OUTPUTS else str(inputs["folder"]))
    for out in bad:
        result = runner.invoke(app, _commands(inputs, out)[command])
        said = " ".join(result.output.split())
        assert result.exit_code == 2, (out, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "error:" in said and str(inputs["file"] if "below" in out or command in
                                        FOLDER_OUTPUTS else inputs["folder"]) in said, said
        assert "Traceback" not in said


def test_a_checkpoints_folder_that_cannot_be_made_stops_the_run_before_training(inputs,
                                                                                 tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("a file where the checkpoints folder goes\n")
    result = runner.invoke(app, ["pretrain", *tiny_overrides(inputs["data"]), "--out", str(run)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and str(run / "checkpoints") in said, said
    assert not (run / "metrics.csv").exists()  # no epoch was trained only to be lost
