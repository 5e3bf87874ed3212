"""One writer per output folder: a second `mixdiff pretrain` (or `generate` on the same shard)
is refused with one line naming the holder, and a killed holder leaves no lock behind."""

import os
import signal
import subprocess
import sys
import time

import pytest

from mixdiff.generate.runner import generate
from mixdiff.generate.settings import GenerateSettings
from mixdiff.lock import FolderInUseError, exclusive, lock_name

from conftest import make_tree, tiny_overrides

pytestmark = pytest.mark.slow  # real processes killed and re-run

HOLD = """
import sys, time
from mixdiff.lock import exclusive
with exclusive(sys.argv[1], "the holder"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(folder):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_held_folder_is_refused_naming_the_holder_until_the_holder_dies(tmp_path):
    folder = tmp_path / "out"
    process = _holder(folder)
    try:
        with pytest.raises(FolderInUseError, match=rf"`the holder` \(pid {process.pid} on "):
            with exclusive(folder, "a second writer"):
                pass
    finally:
        process.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel drops the lock
        process.wait()
    with exclusive(folder, "the next one"):
        assert "the next one" in (folder / lock_name()).read_text()


def test_a_folder_made_only_for_the_lock_goes_again(tmp_path):
    with pytest.raises(RuntimeError):
        with exclusive(tmp_path / "new", "a failed start"):
            raise RuntimeError("a failed start")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with exclusive(tmp_path / "old", "a start"):
        pass
    assert (tmp_path / "old").is_dir()  # it was there before: kept


def test_a_second_pretrain_into_a_running_ones_folder_is_refused(tiny_data, tmp_path):
    real = make_tree(tmp_path / "real", per_class=20)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "mixdiff.cli", "pretrain", *tiny_overrides(tiny_data, **{
        "data.real": real, "data.mode": "real", "trainer.max_epochs": 1000,
        "trainer.limit_train_batches": 1.0}), "--out", str(run)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.csv").exists():  # training: the folder is held
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert second.returncode == 2, second.stdout + second.stderr
        said = " ".join((second.stdout + second.stderr).split())
        assert f"is being written by `mixdiff pretrain` (pid {first.pid} on" in said
        assert "Traceback" not in said
    finally:
        first.kill()
        first.wait()


def test_a_second_generate_of_the_same_shard_is_refused(tmp_path):
    real = make_tree(tmp_path / "real", per_class=2)
    out = tmp_path / "out"
    settings = GenerateSettings(generator="sdedit", model=str(tmp_path / "not-needed"))
    with exclusive(out, "the other generate", part="shard-0-of-1"):
        with pytest.raises(FolderInUseError, match="the other generate"):
            generate(real, out, settings, shard=(0, 1), show_progress=False)
        # another shard of the same run is not held: it gets as far as loading its model
        with pytest.raises(Exception) as other:
            generate(real, out, settings, shard=(1, 2), show_progress=False)
        assert not isinstance(other.value, FolderInUseError)
