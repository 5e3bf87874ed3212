"""A linear probe or a feature cache whose pickle would run code: refused in one line where it
is opened (`eval knn`, `data verify --fidelity`), and its code never runs."""

from __future__ import annotations

import os
import shutil

import torch
from typer.testing import CliRunner

from mixdiff.cli import app

from conftest import save_malicious

runner = CliRunner()


def _refused(result, paths, marker, what) -> None:
    """One line naming one of `paths` (the first such file opened)."""
    error = result.output[result.output.index("error: "):]  # after any warnings
    assert result.exit_code == 2 and not marker.exists(), result.output
    assert len(error.strip().splitlines()) == 1, error
    said = " ".join(error.split())
    assert any(str(p) in said for p in paths) and "posix.system" in said
    assert f"a {what} may not run code" in said
    assert "weights_only=False" not in said


def test_a_malicious_feature_cache_or_probe_runs_nothing(eval_runs, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run, copy_function=os.link)  # files replaced, not written
    marker = tmp_path / "ran"
    knn = ["eval", "knn", "--run", str(run), "--train", str(eval_runs["train"]), "--val",
           str(eval_runs["val"]), "--device", "cpu", "--num-workers", "0"]
    assert runner.invoke(app, knn).exit_code == 0
    caches = sorted((run / "cache" / "features").glob("*.pt"))
    assert caches
    for cache in caches:
        save_malicious(cache, marker, {"features": torch.zeros(1, 1)})
    result = runner.invoke(app, knn)
    _refused(result, caches, marker, "feature cache")

    probe = run / "eval" / "linear" / "tiny.probe.pt"
    save_malicious(probe, marker, {"classes": ["circle"]})
    result = runner.invoke(app, ["data", "verify", "--real", str(tiny_data["real"]),
                                 "--synthetic", str(tiny_data["syn0"]), "--fidelity", str(run),
                                 "--device", "cpu"])
    _refused(result, [probe], marker, "linear probe")


def test_a_linear_probe_of_another_structure_is_one_line(eval_runs, tiny_data, tmp_path):
    """DP2: a probe file of another structure (a dict without `classes`, tensors of other
    shapes, a bare tensor) was a KeyError 'classes' traceback in `eval robustness` and
    `data verify --fidelity`."""
    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run, copy_function=os.link)
    fitted = runner.invoke(app, ["eval", "linear", "--run", str(run), "--train",
                                 str(tiny_data["real"]), "--val", str(tiny_data["val"]),
                                 "--name", "tiny", "--device", "cpu", "--num-workers", "0"])
    assert fitted.exit_code == 0, fitted.output
    probe = run / "eval" / "linear" / "tiny.probe.pt"
    state = torch.load(probe)
    for damaged, said in (({"weight": torch.zeros(3, 4)}, "(no bias, mean, std, classes"),
                          ({**state, "bias": torch.zeros(7)},
                           "(for 3 classes of 512 features, tensors of other shapes: bias (7,))"),
                          (torch.zeros(3), "(it holds a Tensor, not a dict)")):
        probe.unlink()  # a new file: never written through the hard link's other names
        torch.save(damaged, probe)
        result = runner.invoke(app, ["data", "verify", "--real", str(tiny_data["real"]),
                                     "--synthetic", str(tiny_data["syn0"]), "--fidelity",
                                     str(run), "--device", "cpu"])
        error = result.output[result.output.index("error: "):]
        assert result.exit_code == 2 and len(error.strip().splitlines()) == 1, result.output
        assert f"linear probe {probe} is not a probe of `mixdiff eval linear` {said}" in \
            " ".join(error.split()), error
