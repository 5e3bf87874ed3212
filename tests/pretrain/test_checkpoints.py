"""A damaged checkpoint, wherever it is given (eval, export, resume, init_from), is one line that
names the file and says what is wrong with it; never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import signal

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.errors import ConfigError, RunDirError, UnsafeFileError
from mixdiff.pretrain import train
from mixdiff.pretrain.callbacks import RunInterrupted
from mixdiff.pretrain.methods import METHODS
from mixdiff.pretrain.train import pretrain
from mixdiff.runs import RunDir, read_checkpoint
from mixdiff.torch_files import load_torch_file

from conftest import make_tree, save_malicious, tiny_overrides

runner = CliRunner()

DAMAGE = {
    "empty": (lambda good: b"", "is empty"),
    "truncated": (lambda good: good[: len(good) // 2], "is cut short"),
    "text": (lambda good: b"this is not a checkpoint\n", "is not a PyTorch checkpoint"),
    "a tensor": (lambda good: torch.zeros(3), "holds no `state_dict`"),
    # CK2: a dict of torch's, but no weights (a resume said KeyError 'pytorch-lightning_version')
    "no state_dict": (lambda good: {"epoch": 0, "global_step": 2}, "holds no `state_dict`"),
}


def _damaged(kind: str, good: bytes, path):
    made = DAMAGE[kind][0](good)
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        torch.save(made, path)


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


def test_a_checkpoint_whose_tensors_do_not_fit_the_model_is_one_line_everywhere(trained,
                                                                                tmp_path):
    """CK3: a checkpoint tensor of another shape was torch's "size mismatch" traceback in eval
    and export (and a resume), and `init_from` said "loaded 129 of 130 tensors" and trained.
    CK2-res: a checkpoint with weights but no training state was a KeyError on resume."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained["run"].root, run.root)
    saved = torch.load(run.last_checkpoint, weights_only=True)
    saved["state_dict"]["backbone.conv1.weight"] = torch.zeros(7, 7, 3, 3)
    torch.save(saved, run.last_checkpoint)
    said = "backbone.conv1.weight: (7, 7, 3, 3) in the file, (64, 3, 3, 3) in the model"
    for command in (["eval", "knn", "--run", str(run.root), "--train", str(trained["val"]),
                     "--val", str(trained["val"]), "--device", "cpu", "--num-workers", "0"],
                    ["export", "--run", str(run.root), "--out", str(tmp_path / "b.safetensors")]):
        result = runner.invoke(app, command)
        error = result.output[result.output.index("error: "):]  # after a warning
        message = " ".join(error.split())
        assert result.exit_code == 2 and len(error.strip().splitlines()) == 1, message
        assert f"checkpoint {run.last_checkpoint}: its student weights do not fit the run's " \
            "model" in message and said.removeprefix("backbone.") in message, message
    overrides = trained["overrides"]
    with pytest.raises(RunDirError, match=f"its weights do not fit .*{re.escape(said)}"):
        pretrain(load_config(None, overrides + ["trainer.max_epochs=2"]), run.root)
    other = tmp_path / "other"
    with pytest.raises(ConfigError,
                       match=f"`init_from`: .*'s backbone does not fit .*{re.escape(said)}"):
        pretrain(load_config(None, overrides + [f"init_from={run.last_checkpoint}"]), other)
    assert not other.exists()

    del saved["optimizer_states"]  # fitting weights, no training state
    saved["state_dict"]["backbone.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(saved, run.last_checkpoint)
    with pytest.raises(RunDirError, match="not the training state a resume needs \\(no "
                                          "optimizer_states\\)"):
        pretrain(load_config(None, overrides + ["trainer.max_epochs=2"]), run.root)


def test_init_from_names_the_tensors_it_does_not_load(trained, tmp_path):
    """A checkpoint whose backbone fits and whose head does not: the head starts afresh, and the
    log line names each tensor not loaded and why."""
    import logging

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    source = tmp_path / "source.ckpt"
    saved = torch.load(trained["run"].last_checkpoint, weights_only=True)
    head = next(k for k in saved["state_dict"] if k.startswith("projector.") and
                k.endswith("weight"))
    saved["state_dict"][head] = torch.zeros(5, 5)
    torch.save(saved, source)
    logger, lines = logging.getLogger("mixdiff"), Lines()
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(lines)
    try:
        pretrain(load_config(None, trained["overrides"] + [f"init_from={source}"]),
                 tmp_path / "other")
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    line = next(line for line in lines.lines if "init_from" in line)
    assert f"not loaded, so starting afresh: {head}: (5, 5) in the file" in line, line


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


def _one_line_refusal(said: str, path, marker) -> None:
    assert not marker.exists(), "the checkpoint's code ran"
    assert len(said.strip().splitlines()) == 1, said
    assert str(path) in " ".join(said.split()) and "posix.system" in said, said
    assert "may not run code" in said and "weights_only=False" not in said, said


def test_a_malicious_checkpoint_runs_nothing_wherever_it_is_opened(trained, tiny_data, tmp_path):
    """A last.ckpt whose pickle would call os.system, opened by every command that reads a
    checkpoint: each refuses it in one line that names it, and its code never runs."""
    marker = tmp_path / "the-checkpoint-ran-code"
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained["run"].root, run.root)
    good = read_checkpoint(run.last_checkpoint)  # weights_only: it holds tensors and containers
    save_malicious(run.last_checkpoint, marker, good)
    image = str(next(tiny_data["real"].rglob("*.png")))
    for command in (
            ["eval", "knn", "--run", str(run.root), "--train", str(trained["val"]), "--val",
             str(trained["val"]), "--device", "cpu", "--num-workers", "0"],
            ["export", "--run", str(run.root), "--out", str(tmp_path / "b.safetensors")],
            ["attention", "--run", str(run.root), "--images", image, "--out",
             str(tmp_path / "a.png"), "--device", "cpu"],  # refused before its ResNet is
            ["data", "verify", "--real", str(tiny_data["real"]), "--synthetic",
             str(tiny_data["syn0"]), "--fidelity", str(run.root), "--device", "cpu"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        error = result.output[result.output.index("error: "):]  # after any warnings
        _one_line_refusal(error, run.last_checkpoint, marker)
    overrides = trained["overrides"]
    with pytest.raises(UnsafeFileError) as resumed:
        pretrain(load_config(None, overrides + ["trainer.max_epochs=2"]), run.root)
    _one_line_refusal(str(resumed.value), run.last_checkpoint, marker)
    with pytest.raises(ConfigError) as started:
        pretrain(load_config(None, overrides + [f"init_from={run.last_checkpoint}"]),
                 tmp_path / "other")
    _one_line_refusal(str(started.value), run.last_checkpoint, marker)
    assert not (tmp_path / "b.safetensors").exists() and not (tmp_path / "a.png").exists()


class _StopAtStep(Callback):
    """SIGTERM this process at one optimiser step: the run saves mid-epoch and stops."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_every_checkpoint_we_write_needs_nothing_beyond_torchs_defaults(
        trained, eval_runs, tiny_data, tmp_path, monkeypatch):
    """Checkpoints of every method, a mid-epoch one (SIGTERM, with step checkpoints on), the same
    run resumed, the untrained reference and the weights ddp_spawn hands back: each loads with
    weights_only=True and no global allowed beyond torch's own."""
    overrides = trained["overrides"]
    build = train.build_trainer
    monkeypatch.setattr(train, "build_trainer", lambda cfg, run: _with(build(cfg, run)))
    stopped = load_config(None, overrides + ["trainer.limit_train_batches=3",
                                             "trainer.checkpoint_every_n_steps=1"])
    with pytest.raises(RunInterrupted, match="SIGTERM"):
        pretrain(stopped, tmp_path / "stopped")
    checkpoints = {"stopped mid-epoch": read_checkpoint(tmp_path / "stopped" / "checkpoints" /
                                                        "last.ckpt")["global_step"]}
    monkeypatch.setattr(train, "build_trainer", build)
    pretrain(stopped, tmp_path / "stopped")  # resumed to its end
    untrained = pretrain(load_config(None, overrides + ["trainer.max_epochs=0"]),
                         tmp_path / "untrained")
    barlow = pretrain(load_config(None, overrides + ["method=barlow_twins"]), tmp_path / "bt")
    spawned = tmp_path / ".temp.ckpt"  # what ddp_spawn's launcher saves and loads: a state dict
    io = train.AtomicCheckpointIO()
    io.save_checkpoint(METHODS["simclr"](OmegaConf.to_container(load_config(
        None, overrides), resolve=True), 3).state_dict(), spawned)
    assert checkpoints["stopped mid-epoch"] == 2  # saved where it stopped, not at an epoch end
    for path in (tmp_path / "stopped", untrained, barlow, eval_runs["simclr"], eval_runs["dino"],
                 trained["run"].root):
        path = RunDir(path).last_checkpoint
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [], path
        assert "state_dict" in load_torch_file(path, "checkpoint")  # nothing else allowed
    assert torch.serialization.get_unsafe_globals_in_checkpoint(spawned) == []
    assert io.load_checkpoint(spawned).keys() == load_torch_file(spawned).keys()


def _with(trainer):
    trainer.callbacks.insert(0, _StopAtStep())
    return trainer
