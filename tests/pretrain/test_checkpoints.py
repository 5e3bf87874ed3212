"""A damaged checkpoint, wherever it is given (eval, export, resume, init_from), is one line that
names the file and says what is wrong with it; never a traceback."""

from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.errors import ConfigError, RunDirError
from mixdiff.runs import RunDir, read_checkpoint
from mixdiff.pretrain.train import pretrain

from conftest import make_tree, tiny_overrides

runner = CliRunner()

DAMAGE = {
    "empty": (lambda good: b"", "is empty"),
    "truncated": (lambda good: good[: len(good) // 2], "is cut short"),
    "text": (lambda good: b"this is not a checkpoint\n", "is not a PyTorch checkpoint"),
    "a tensor": (None, "holds no `state_dict`"),
}


def _damaged(kind: str, good: bytes, path):
    make, _ = DAMAGE[kind]
    if make is None:
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(make(good))


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("checkpoints")
    overrides = tiny_overrides(tiny_data)
    run = RunDir(pretrain(load_config(None, overrides), base / "run"))
    return {"run": run, "overrides": overrides, "val": make_tree(base / "val", 2, seed=9)}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_checkpoint_is_one_line_everywhere(kind, trained, tmp_path):
    good = trained["run"].last_checkpoint.read_bytes()
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained["run"].root, run.root)
    _damaged(kind, good, run.last_checkpoint)
    expected = DAMAGE[kind][1]

    with pytest.raises(RunDirError, match=expected):
        read_checkpoint(run.last_checkpoint)
    for command in (["eval", "knn", "--run", str(run.root), "--train", str(trained["val"]),
                     "--val", str(trained["val"]), "--device", "cpu", "--num-workers", "0"],
                    ["export", "--run", str(run.root), "--out", str(tmp_path / "b.safetensors")]):
        result = runner.invoke(app, command)
        said = " ".join(result.output.split())
        assert result.exit_code == 2, result.output
        assert str(run.last_checkpoint) in said and expected in said, said
        assert "mmap" not in said  # torch's advice, which does not apply to a damaged file
    # resuming the run from it, and starting another run from it
    overrides = trained["overrides"]
    with pytest.raises(RunDirError, match=expected):
        pretrain(load_config(None, overrides + ["trainer.max_epochs=2"]), run.root)
    with pytest.raises(ConfigError, match=f"`init_from`: checkpoint .* {expected}"):
        pretrain(load_config(None, overrides + [f"init_from={run.last_checkpoint}"]),
                 tmp_path / "other")


def _pickled_globals(checkpoint) -> set[str]:
    """The `module name` pairs a torch.save zip's pickle refers to (what unpickling imports)."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(checkpoint) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    ops = list(pickletools.genops(data))
    found = set()
    for i, (op, arg, _) in enumerate(ops):
        if op.name == "GLOBAL":
            found.add(arg)
        elif op.name == "STACK_GLOBAL":  # module and name were the two strings pushed before it
            found.add(f"{ops[i - 2][1]} {ops[i - 1][1]}")
    return found


@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_a_checkpoint_names_no_mixdiff_module(eval_runs, method):
    """A checkpoint holds tensors and plain containers only, so one written before a module
    moved (pre-training's move into `pretrain/`) still loads, resumes and evaluates: checked by
    hand on a run written by the code before the move; this keeps it true for the next move."""
    names = _pickled_globals(eval_runs[method] / "checkpoints" / "last.ckpt")
    assert names and not [name for name in names if name.startswith("mixdiff")], names
    assert {name.split(" ")[0].split(".")[0] for name in names} <= {"torch", "collections",
                                                                    "builtins", "_codecs",
                                                                    "numpy"}
