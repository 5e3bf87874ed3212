"""An output path that cannot be written (a file where a folder is wanted, a path under a file, a
folder where a file is wanted) is one line naming the path, for every command that writes;
never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.pretrain.train import pretrain
from mixdiff.report.figures import pyplot

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


def _snapshot(*folders):
    return {p: p.read_bytes() for folder in folders for p in Path(folder).rglob("*")
            if p.is_file()}


@pytest.fixture
def own_run(inputs, tmp_path):
    """A run of this test's own (hard links: a rename or a new file never reaches the shared
    one), and a folder of a user's files."""
    run = tmp_path / "run"
    shutil.copytree(inputs["run"], run, copy_function=os.link)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.csv").write_text("my,own\n1,2\n")
    (user / "results.md").write_text("# Results\n\nmy own notes\n")
    plot = pyplot()
    fig, ax = plot.subplots()
    ax.plot([0, 1])
    fig.savefig(user / "picture.png")  # a PNG of the user's (matplotlib's, not mixdiff's)
    plot.close(fig)
    return run, user


def _refusals(inputs, run, user):
    data = inputs["data"]
    verify = ["data", "verify", "--real", str(data["real"]), "--synthetic", str(data["syn0"]),
              "--fidelity", str(run), "--scores"]
    grid = ["data", "grid", "--real", str(data["real"]), "--synthetic", str(data["syn0"]),
            "--out"]
    image = str(next(Path(data["real"]).rglob("*.png")))
    attention = ["attention", "--run", str(run), "--images", image, "--out"]
    return {
        "SCV1": (verify + [str(run / "metrics.csv")], "own files"),
        "SCV2": (verify + [str(user / "notes.csv")],
                 f"{user / 'notes.csv'} exists and was not written by an earlier `mixdiff data "
                 "verify`"),
        "GRID": (grid + [str(run / "data.json")], "own files"),
        "GRID-user": (grid + [str(user / "picture.png")],
                      "was not written by an earlier `mixdiff data grid`"),
        "AT-out": (attention + [str(run / "data.json")], "own files"),
        "AT-user": (attention + [str(user / "picture.png")],
                    "was not written by an earlier `mixdiff attention`"),
        "RPT-out": (["report", str(run), "--out", str(user)],
                    f"{user / 'results.md'} exists and was not written by an earlier `mixdiff "
                    "report`"),
    }


@pytest.mark.parametrize("case", ["SCV1", "SCV2", "GRID", "GRID-user", "AT-out", "AT-user",
                                  "RPT-out"])
def test_no_command_replaces_a_run_folders_own_file_or_a_users_file(inputs, own_run, case):
    """`data verify --scores RUN/metrics.csv` replaced the run's metrics; `--scores notes.csv`,
    `data grid --out RUN/data.json`, `attention --out RUN/data.json` and `report --out DIR` (over
    DIR/results.md) replaced what another command or the user wrote. Refused before any work, in
    one line; nothing changes."""
    run, user = own_run
    command, said = _refusals(inputs, run, user)[case]
    before = _snapshot(run, user)
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert said in " ".join(result.output.split()), result.output
    assert _snapshot(run, user) == before


def test_a_commands_own_earlier_output_is_replaced(inputs, tmp_path):
    """What a command wrote, its next run may replace: the same grid, the same report folder, a
    scores file (also a report folder whose figures predate their stamp, beside its
    results.json)."""
    from mixdiff.data.twin_scores import is_scores_file, write_scores
    from mixdiff.report.build import earlier_report_file

    data = inputs["data"]
    grid = ["data", "grid", "--real", str(data["real"]), "--synthetic", str(data["syn0"]),
            "--out", str(tmp_path / "grid.png")]
    report = ["report", str(inputs["run"]), "--out", str(tmp_path / "report")]
    for command in (grid, grid, report, report):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    scores = tmp_path / "scores.csv"
    write_scores(scores, [])
    assert is_scores_file(scores) and not is_scores_file(tmp_path / "report" / "results.csv")
    unstamped = tmp_path / "report" / "curves.png"
    unstamped.write_bytes((tmp_path / "grid.png").read_bytes())  # drawn by another command
    assert earlier_report_file(unstamped)
    assert not earlier_report_file(tmp_path / "grid.png")


def test_a_figure_is_never_written_into_an_image_tree_the_command_reads(inputs, tmp_path):
    """`data grid --out REAL/circle/new.png` (or into a --synthetic root, or `attention --out`
    beside an --images file, in its class folder) wrote the figure into the tree, where every
    later scan (training included) took it for one of its images. Refused in one line, nothing
    written."""
    real = make_tree(tmp_path / "real", per_class=1)
    syn = make_tree(tmp_path / "syn", per_class=1, ext=".jpg", seed=1)
    image = real / "circle" / "img00.png"
    grid = ["data", "grid", "--real", str(real), "--synthetic", str(syn), "--out"]
    attention = ["attention", "--run", str(inputs["run"]), "--images", str(image), "--out"]
    before = _snapshot(real, syn)
    for command, out, named in (
            (grid, real / "circle" / "new.png", f"--real {real}"),
            (grid, syn / "square" / "new.png", f"--synthetic {syn}"),
            (attention, real / "circle" / "attention.png", f"the folder of --images {image}"),
            # another class folder of the image's tree (AT3): a folder of images all the same
            (attention, real / "square" / "attention.png",
             f"{real / 'square'} (another class folder of the images' tree)")):
        result = runner.invoke(app, [*command, str(out)])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, said
        assert f"--out {out}: {out} lies inside {named}, an image folder this command reads" \
            in said and "give another --out (outside it)" in said, said
        assert _snapshot(real, syn) == before
    beside = runner.invoke(app, [*grid, str(tmp_path / "grid.png")])
    assert beside.exit_code == 0, beside.output


@pytest.mark.parametrize("edited", ["results.md", "results.csv", "results.json"])
def test_a_reports_file_edited_by_hand_is_not_replaced(inputs, tmp_path, edited):
    """RPT-edited: `report --out DIR` again replaced DIR/results.md (and .csv, .json) that the
    user had added to (each was recognised as the report's own). Its own output is replaced; an
    edited one is refused, in one line, and kept."""
    out = tmp_path / "report"
    command = ["report", str(inputs["run"]), "--out", str(out)]
    for _ in range(2):  # a second report into its own folder replaces its own files
        done = runner.invoke(app, command)
        assert done.exit_code == 0, done.output
    mine = out / edited
    if edited == "results.json":  # still the report's shape, with the user's own entry
        mine.write_text(json.dumps({**json.loads(mine.read_text()), "mine": "my notes"}))
    else:
        mine.write_text(mine.read_text() + "my notes\n")
    kept = mine.read_text()
    refused = runner.invoke(app, command)
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, said
    assert f"{mine} exists and was not written by an earlier `mixdiff report`" in said, said
    assert mine.read_text() == kept
