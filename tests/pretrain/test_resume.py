"""Runs that survive: a real `mixdiff pretrain` process killed (SIGKILL) or stopped (SIGTERM)
after an epoch resumes where it was, and a run stopped mid-epoch sees exactly the samples an
uninterrupted run would have seen."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import mixdiff.pretrain.train
from mixdiff.pretrain.callbacks import RunInterrupted
from mixdiff.config import load_config
from mixdiff.pretrain.input.datamodule import ResumableSampler
from mixdiff.runs import Metric
from mixdiff.pretrain.train import pretrain

from conftest import make_tree, tiny_overrides

pytestmark = pytest.mark.slow  # real processes killed and re-run


def _rows(run):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _checkpoint(run):
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def bigger_tree(tmp_path_factory):
    """60 images, so that an epoch has 12 batches of 4: time to act between two epochs."""
    return make_tree(tmp_path_factory.mktemp("resume") / "real", per_class=20)


def _command(tiny_data, real, out, epochs):
    overrides = tiny_overrides(tiny_data, **{
        "data.real": real, "data.mode": "real", "data.val_fraction": 0.1, "data.num_workers": 1,
        "trainer.max_epochs": epochs, "trainer.limit_train_batches": 1.0,
        "trainer.logger": "none"})
    return [sys.executable, "-m", "mixdiff.cli", "pretrain", *overrides, "--out", str(out)]


def _start_and_wait_for_epoch(command, run, timeout=300):
    """Start `mixdiff pretrain`; return the process once epoch 0's row and checkpoint exist."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "metrics.csv").exists() and (run / "checkpoints" / "last.ckpt").exists():
            return process
        if process.poll() is not None:
            pytest.fail(f"pretrain exited early:\n{process.stdout.read()}")
        time.sleep(0.02)
    process.kill()
    pytest.fail("no epoch finished in time")


def _finish(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_sigkill_after_an_epoch_loses_only_the_epoch_in_progress(tiny_data, bigger_tree,
                                                                   tmp_path):
    run = tmp_path / "run"
    command = _command(tiny_data, bigger_tree, run, epochs=3)
    process = _start_and_wait_for_epoch(command, run)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = _checkpoint(run)
    first_rows = _rows(run)
    assert saved["epoch"] >= 0 and first_rows and first_rows[0]["epoch"] == "0"

    output = _finish(command)  # the same command again
    assert "resuming from" in output
    # off a terminal, a plain line per epoch: time and message, not padded to the console width
    assert re.search(r"^\d\d:\d\d:\d\d epoch 3/3: loss \d+\.\d+, .* samples/s$", output, re.M)
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]  # each epoch once
    assert rows[0] == first_rows[0]  # epoch 0 was not trained again: its row is untouched
    steps_per_epoch = int(rows[0]["step"])
    assert _checkpoint(run)["global_step"] == 3 * steps_per_epoch
    # and it repeats an uninterrupted run (loader workers included), but for the time columns
    _finish(_command(tiny_data, bigger_tree, tmp_path / "straight", epochs=3))
    assert _untimed(rows) == _untimed(_rows(tmp_path / "straight"))


def test_sigterm_saves_where_the_run_is_and_the_rerun_continues(tiny_data, bigger_tree,
                                                                  tmp_path):
    run = tmp_path / "run"
    command = _command(tiny_data, bigger_tree, run, epochs=3)
    process = _start_and_wait_for_epoch(command, run)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "re-run the same command to resume" in output
    steps_per_epoch = int(_rows(run)[0]["step"])
    stopped_at = _checkpoint(run)["global_step"]
    assert steps_per_epoch <= stopped_at < 3 * steps_per_epoch  # saved where it was, not done

    output = _finish(command)
    assert "resuming from" in output
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert _checkpoint(run)["global_step"] == 3 * steps_per_epoch  # continued, not restarted


class _Recorder(Callback):
    """Which samples each training step saw; optionally SIGTERM this process at one step."""

    def __init__(self, seen: list, signal_at_step: int | None = None,
                 signum: int = signal.SIGTERM):
        self.seen, self.signal_at_step, self.signum = seen, signal_at_step, signum

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, trainer.global_step, batch[0].tolist()))
        if trainer.global_step == self.signal_at_step:
            os.kill(os.getpid(), self.signum)


BUILD_TRAINER = mixdiff.pretrain.train.build_trainer


def _run_recorded(monkeypatch, cfg, out, seen, signal_at_step=None, signum=signal.SIGTERM):
    def with_recorder(cfg, run):
        trainer = BUILD_TRAINER(cfg, run)
        trainer.callbacks.insert(0, _Recorder(seen, signal_at_step, signum))
        return trainer

    monkeypatch.setattr(mixdiff.pretrain.train, "build_trainer", with_recorder)
    return pretrain(cfg, out)


def test_a_run_stopped_mid_epoch_sees_what_an_uninterrupted_run_sees(
        tiny_data, bigger_tree, tmp_path, monkeypatch):
    cfg = load_config(None, tiny_overrides(tiny_data, **{
        "data.real": bigger_tree, "data.mode": "real", "data.val_fraction": 0.1,
        "trainer.max_epochs": 2, "trainer.limit_train_batches": 1.0}))
    straight: list = []
    _run_recorded(monkeypatch, cfg, tmp_path / "straight", straight)

    interrupted: list = []
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted, match="SIGTERM at epoch 1"):
        _run_recorded(monkeypatch, cfg, tmp_path / "stopped", interrupted, signal_at_step=15)
    assert signal.getsignal(signal.SIGTERM) == handler  # the run's handler is gone with it
    stopped_at = _checkpoint(tmp_path / "stopped")["global_step"]
    assert stopped_at == 16  # the batch that was running when the signal came is kept
    _run_recorded(monkeypatch, cfg, tmp_path / "stopped", interrupted)

    assert interrupted == straight  # same samples, same order, same steps
    assert [r["epoch"] for r in _rows(tmp_path / "stopped")] == ["0", "1"]
    # the same augmentation draws too: the resumed run's losses are the uninterrupted run's
    assert _untimed(_rows(tmp_path / "stopped")) == _untimed(_rows(tmp_path / "straight"))
    resumed_epoch = float(_rows(tmp_path / "stopped")[1][Metric.EPOCH_SECONDS])
    assert 0 < resumed_epoch < 600  # timed from the resume, not from the machine's boot


def _untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_a_stop_on_an_epochs_last_batch_keeps_that_epochs_row(
        tiny_data, bigger_tree, tmp_path, monkeypatch):
    """Ctrl-C while an epoch's last batch runs: the epoch finishes, its row is written, and the
    re-run starts the next epoch (a checkpoint saved at that batch's end would count the epoch
    done before metrics.csv had its row: the row would be lost for good)."""
    cfg = load_config(None, tiny_overrides(tiny_data, **{
        "data.real": bigger_tree, "data.mode": "real", "data.val_fraction": 0.1,
        "trainer.max_epochs": 2, "trainer.limit_train_batches": 1.0}))
    straight: list = []
    _run_recorded(monkeypatch, cfg, tmp_path / "straight", straight)
    steps_per_epoch = int(_rows(tmp_path / "straight")[0]["step"])

    interrupted: list = []
    with pytest.raises(RunInterrupted, match="SIGINT at epoch 0"):
        _run_recorded(monkeypatch, cfg, tmp_path / "stopped", interrupted,
                      signal_at_step=steps_per_epoch - 1, signum=signal.SIGINT)
    assert [r["epoch"] for r in _rows(tmp_path / "stopped")] == ["0"]
    assert _checkpoint(tmp_path / "stopped")["global_step"] == steps_per_epoch
    _run_recorded(monkeypatch, cfg, tmp_path / "stopped", interrupted)
    assert interrupted == straight
    assert _untimed(_rows(tmp_path / "stopped")) == _untimed(_rows(tmp_path / "straight"))


def test_sampler_resumes_inside_an_epoch():
    data = list(range(23))
    whole = ResumableSampler(data, seed=5)
    whole.set_epoch(3)
    keys = list(whole)  # (index, draw seed)
    assert len({seed for _, seed in keys}) == len(keys)
    order = [index for index, _ in keys]
    resumed = ResumableSampler(data, seed=5)
    resumed.resume(epoch=3, samples_done=8)
    assert list(resumed) == keys[8:]  # the same samples with the same draws
    resumed.set_epoch(4)
    assert len(list(resumed)) == 23  # the next epoch starts at its beginning
    other = ResumableSampler(data, seed=5)
    other.set_epoch(4)
    assert [i for i, _ in other] != order  # epochs are shuffled differently
    short = ResumableSampler(data, seed=5, epoch_size=10)  # a pooled epoch as long as a real one
    short.set_epoch(3)
    assert [i for i, _ in short] == order[:10]
    short.resume(epoch=3, samples_done=4)
    assert [i for i, _ in short] == order[4:10]


def test_several_processes_agree_on_stopping_every_few_steps(tmp_path):
    """Agreeing is a collective that waits for the GPU: with several processes the ranks ask
    every STOP_POLL_STEPS steps (and at every epoch's end), a single process after every step."""
    from types import SimpleNamespace

    from mixdiff.pretrain.callbacks import STOP_POLL_STEPS, RunCheckpoint

    asked = []
    strategy = SimpleNamespace(reduce_boolean_decision=lambda stop, all: asked.append(1) or stop)
    callback = RunCheckpoint(tmp_path / "last.ckpt")
    callback._signal = signal.SIGTERM
    for world_size in (1, 2):
        trainer = SimpleNamespace(world_size=world_size, strategy=strategy)
        stops = []
        for step in range(1, 3 * STOP_POLL_STEPS + 1):
            trainer.global_step = step
            stops.append(callback._stop_requested(trainer))
        expected = range(1, len(stops) + 1) if world_size == 1 else \
            range(STOP_POLL_STEPS, len(stops) + 1, STOP_POLL_STEPS)
        assert [s for s, stop in enumerate(stops, 1) if stop] == list(expected)
        asked.clear()
        assert callback._stop_requested(trainer, any_step=True) and asked  # an epoch's end
