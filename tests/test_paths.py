"""Every name a command writes under, and every data path read from one of our files, stays
inside its folder: a name is a file name, and a path that leads out (`..`, absolute, a link to
elsewhere) is refused in one line."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_saved_config
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


def _hard_linked_copy(run, to):
    """A run of its own to change (hard links: the shared session run stays as it is)."""
    import shutil

    shutil.copytree(run, to, copy_function=os.link)
    return to


def _knn(run, eval_runs, *extra):
    return runner.invoke(app, ["eval", "knn", "--run", str(run), "--train",
                               str(eval_runs["train"]), "--val", str(eval_runs["val"]),
                               "--device", "cpu", "--num-workers", "0", *extra])


def _files(folder):
    return sorted((p, p.read_bytes()) for p in folder.rglob("*") if p.is_file())


def _one_line(result) -> str:
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    return " ".join(result.output.split())


def test_eval_of_a_run_whose_eval_folder_links_outside_is_refused(eval_runs, tmp_path):
    """SL1: RUN/eval a link to a folder outside the run: `eval knn` wrote its result and
    predictions there."""
    import shutil

    run = _hard_linked_copy(eval_runs["simclr"], tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "knn").mkdir(parents=True)
    (elsewhere / "knn" / "keep.txt").write_text("someone's\n")
    shutil.rmtree(run / "eval", ignore_errors=True)
    os.symlink(elsewhere, run / "eval")
    before = _files(elsewhere)
    said = _one_line(_knn(run, eval_runs, "--name", "probe"))
    assert f"{run / 'eval'} is a link to {elsewhere}, outside the run folder {run}" in said
    assert "Replace the link by a folder" in said
    assert _files(elsewhere) == before  # nothing written outside


def test_a_result_file_linked_outside_the_run_is_not_read(eval_runs, tmp_path):
    """SL2: RUN/eval/knn/NAME.json a link to a text file outside: read as the run's result (a
    JSONDecodeError traceback)."""
    run = _hard_linked_copy(eval_runs["simclr"], tmp_path / "run")
    (run / "eval" / "knn").mkdir(parents=True, exist_ok=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("not a result\n")
    os.symlink(victim, run / "eval" / "knn" / "notes.json")
    said = _one_line(_knn(run, eval_runs, "--name", "notes"))
    assert f"{run / 'eval' / 'knn' / 'notes.json'} is a link to {victim}" in said
    assert victim.read_text() == "not a result\n"


def test_a_resume_never_reads_or_replaces_a_checkpoint_outside_the_run(eval_runs, tmp_path):
    """SL3: RUN/checkpoints a link outside: a resume read and replaced the last.ckpt there."""
    from conftest import tiny_overrides

    run = _hard_linked_copy(eval_runs["simclr"], tmp_path / "run")
    outside = tmp_path / "victimck"
    (run / "checkpoints").rename(outside)
    os.symlink(outside, run / "checkpoints")
    before = _files(outside)
    config = load_saved_config(run / "config.yaml")
    result = runner.invoke(app, ["pretrain", *tiny_overrides(
        {"real": config.data.real, "syn0": config.data.synthetic[0],
         "syn1": config.data.synthetic[1]}, **{"trainer.max_epochs": 2}), "--out", str(run)])
    assert result.exit_code == 2, result.output
    assert f"{run / 'checkpoints'} is a link to {outside}" in " ".join(result.output.split())
    assert _files(outside) == before


def test_a_run_folder_that_is_itself_a_link_is_used_as_usual(eval_runs, tmp_path):
    """The way to keep a run on another disk: link the run folder itself; what it holds stays
    inside it, so its commands work through the link."""
    real = _hard_linked_copy(eval_runs["simclr"], tmp_path / "disk" / "run")
    os.symlink(real, tmp_path / "run")
    result = _knn(tmp_path / "run", eval_runs, "--name", "through-link")
    assert result.exit_code == 0, result.output
    assert (real / "eval" / "knn" / "through-link.json").is_file()


def test_a_result_name_with_a_file_suffix_is_refused_and_the_report_reads_only_files(
        eval_runs, tmp_path):
    """N-xjson: `--name x.json` made x.json.json and a folder eval/knn/x.json/ (its predictions)
    that `mixdiff report` then read as a result and failed on."""
    run = _hard_linked_copy(eval_runs["simclr"], tmp_path / "run")
    for name in ("x.json", "probe.pt"):
        result = _knn(run, eval_runs, "--name", name)
        assert result.exit_code == 2 and result.output.startswith("error: --name"), \
            result.output
        assert f"give it without {name[name.index('.'):]}" in " ".join(result.output.split())
    (run / "eval" / "knn" / "folder.json").mkdir(parents=True)  # as an older version made
    assert not [p for p in RunDir(run).eval_results() if p.name == "folder.json"]
