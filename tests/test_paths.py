"""Every name a command writes under, and every data path read from one of our files, stays
inside its folder: a name is a file name, and a path that leads out (`..`, absolute, a link to
elsewhere) is refused in one line."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.errors import UnsafePathError
from mixdiff.paths import file_name, inside
from mixdiff.runs import RunDir

runner = CliRunner()

BAD_NAMES = ["", " ", ".", "..", "../x", "../../../../x", "a/b", "a\\b", "/tmp/abs", "x\0y"]


def test_a_name_is_a_file_name():
    for good in ("fashion-mnist", "cifar10-student", "a.b", "..x"):
        assert file_name(good) == good
    for bad in BAD_NAMES:
        with pytest.raises(UnsafePathError, match="--name") as refused:
            file_name(bad)
        assert "\n" not in str(refused.value)


def test_a_run_folder_never_gives_a_path_outside_it(tmp_path):
    run = RunDir(tmp_path / "run")
    for bad in BAD_NAMES:
        for where in (lambda: run.eval_result("knn", bad), lambda: run.probe(bad),
                      lambda: run.eval_artifact("robustness", bad, "predictions.json")):
            with pytest.raises(UnsafePathError, match="the result name"):
                where()
    assert run.eval_result("knn", "ok") == run.root / "eval" / "knn" / "ok.json"


@pytest.mark.parametrize("command", ["knn", "linear", "transfer"])
def test_eval_name_never_leaves_the_run_folder(eval_runs, tmp_path, command):
    """`--name ../../../../x` and an absolute --name: refused before any work, nothing written
    where they point."""
    run = eval_runs["simclr"]
    before = sorted(p for p in run.rglob("*"))
    options = {"transfer": ["--dataset", "cifar10", "--root", str(tmp_path / "none")]}.get(
        command, ["--train", str(eval_runs["train"]), "--val", str(eval_runs["val"])])
    escape = "../" * (len(run.parts) + 2) + str(tmp_path / "escaped")[1:]  # from eval/<cmd>/
    for name in (escape, str(tmp_path / "absolute"), ""):
        result = runner.invoke(app, ["eval", command, "--run", str(run), *options, "--name",
                                     name, "--device", "cpu", "--num-workers", "0"])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: --name") and \
            len(result.output.strip().splitlines()) == 1, result.output
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(("escaped", "absolute"))]
    assert sorted(p for p in run.rglob("*")) == before


def test_a_path_read_from_a_file_stays_in_its_folder(tmp_path):
    folder = tmp_path / "out"
    (folder / "v0").mkdir(parents=True)
    (folder / "v0" / "a.jpg").write_bytes(b"x")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    assert inside(folder, "v0/a.jpg", "m") == folder / "v0" / "a.jpg"
    os.symlink(folder / "v0" / "a.jpg", folder / "v0" / "link-in.jpg")
    assert inside(folder, "v0/link-in.jpg", "m") == folder / "v0" / "link-in.jpg"
    os.symlink(tmp_path / "outside.jpg", folder / "v0" / "link-out.jpg")
    for bad in ("../outside.jpg", "v0/../../outside.jpg", str(tmp_path / "outside.jpg"),
                "v0/link-out.jpg"):
        with pytest.raises(UnsafePathError, match=f"manifest row 3: the path .* leads outside "
                                                  f"{folder}") as refused:
            inside(folder, bad, "manifest row 3")
        assert "\n" not in str(refused.value)
