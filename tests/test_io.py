"""Atomic writes: whole files or none, and an error that names the file asked for."""

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from mixdiff.cli._app import path_problem
from mixdiff.io import STALE_AFTER_S, atomic_open, atomic_write_text, remove_stale_temporaries


def test_a_write_that_cannot_start_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    """A folder without write permission refuses the hidden temporary file (root is never
    refused, so the refusal is the operating system's error, raised where it would be)."""
    def refused(dir, prefix, suffix):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}abc{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    target = tmp_path / "x.json"
    with pytest.raises(PermissionError) as caught:
        atomic_write_text(target, "{}")
    assert caught.value.filename == str(target) and caught.value.errno == errno.EACCES


def test_a_write_replaces_the_file_in_one_step(tmp_path):
    target = tmp_path / "a" / "b.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_a_full_disk_says_so_naming_the_file_and_keeps_the_old_one(tmp_path, full_disk):
    """torch.save onto a full disk said "unexpected pos". A checkpoint (Lightning's, through
    the run's checkpoint IO) and a .pt file fail with ENOSPC naming the file; the old file stays
    whole and no temporary is left."""
    from mixdiff.pretrain.train import AtomicCheckpointIO

    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 1}, checkpoint)
    kept = checkpoint.read_bytes()
    def torch_says_unexpected_pos():  # torch.save's zip writer, when its write failed
        with atomic_open(checkpoint, "wb"):
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                                   "704 vs 598")

    for write in (lambda: AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(5000)},
                                                               checkpoint),
                  lambda: atomic_write_text(checkpoint, "x" * 100_000),
                  torch_says_unexpected_pos):
        with pytest.raises(OSError) as caught:
            write()
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(checkpoint)
        assert path_problem(caught.value).startswith(f"{checkpoint}: the disk is full")
        assert checkpoint.read_bytes() == kept
        assert os.listdir(checkpoint.parent) == ["last.ckpt"]


# A writer that is killed while it writes: its temporary stays behind, locked until it dies.
WRITER = """
import sys, time
from mixdiff.io import atomic_open
with atomic_open(sys.argv[1]) as handle:
    handle.write("half")
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def _start_writer(target: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)],
                               stdout=subprocess.PIPE, text=True, env=os.environ)
    assert process.stdout.readline().strip() == "writing"
    return process


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _age(paths, seconds: float) -> None:
    for path in paths:
        past = time.time() - seconds
        os.utime(path, (past, past))


def test_a_killed_writers_temporary_is_removed_by_the_next_write_not_a_live_ones(tmp_path):
    """SIGKILL leaves the hidden temporary: the next write into its folder removes it, but never
    the temporary of a writer still alive (it holds a lock on it), nor one just made."""
    dead, alive = _start_writer(tmp_path / "a.json"), _start_writer(tmp_path / "b.json")
    dead.kill()
    dead.wait()
    try:
        left = [tmp_path / name for name in _temporaries(tmp_path)]
        assert len(left) == 2
        _age(left, 2 * STALE_AFTER_S)  # old enough: only the lock tells them apart
        atomic_write_text(tmp_path / "c.json", "{}")  # a later command's first write here
        remaining = _temporaries(tmp_path)
        assert remaining == [p.name for p in left if p.name.startswith(".b.json.")]
    finally:
        alive.kill()
        alive.wait()
    fresh = tmp_path / "young"
    fresh.mkdir()
    (fresh / ".d.json.abcd1234.tmp").write_text("")  # unlocked, but too young to tell
    assert remove_stale_temporaries(fresh) == [] and _temporaries(fresh) == [".d.json.abcd1234.tmp"]


def test_sigterm_removes_the_temporary_of_a_command(tmp_path, monkeypatch):
    """A command stopped by SIGTERM (a cluster's time limit, `kill`) goes through the same
    cleanup as Ctrl-C: its temporary is removed, the file it was writing is not made, and it
    exits with 128 + SIGTERM. (Python's default ends the process at once, cleaning nothing.)"""
    import mixdiff.report.build
    from typer.testing import CliRunner

    from mixdiff.cli import app

    def killed_while_writing(runs, out, *args):
        with atomic_open(Path(out) / "results.md") as handle:
            handle.write("half")
            handle.flush()
            assert len(_temporaries(Path(out))) == 1
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the signal's handler raises here
        raise AssertionError("SIGTERM did not stop the command")

    def outside_the_command(signum, frame):  # the test's own: the default would end pytest
        raise AssertionError("SIGTERM reached the handler outside the command")

    monkeypatch.setattr(mixdiff.report.build, "write_report", killed_while_writing)
    before = signal.signal(signal.SIGTERM, outside_the_command)
    try:
        result = CliRunner().invoke(app, ["report", str(tmp_path), "--out",
                                          str(tmp_path / "out")])
        assert signal.getsignal(signal.SIGTERM) is outside_the_command  # restored after it
    finally:
        signal.signal(signal.SIGTERM, before)
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "stopped by SIGTERM" in result.output
    assert list((tmp_path / "out").iterdir()) == []


class _SignalledWhileWriting:
    """A file that receives SIGTERM once `after` bytes have gone through it: the signal's handler
    raises inside the writer's call (torch.save's zip writer then fails on its own)."""

    def __init__(self, handle, after: int):
        self.handle, self.after, self.written = handle, after, 0

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > self.after:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises here
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def test_sigterm_inside_torch_save_is_a_stop_and_its_temporary_goes(eval_runs, tmp_path,
                                                                     monkeypatch):
    """EXK-pt: SIGTERM during `export --out x.pt` came out as torch's RuntimeError "unexpected
    pos" (its zip writer fails when the stop raised inside it): a stop it is, said as one, and
    neither the file nor its temporary is left."""
    from typer.testing import CliRunner

    from mixdiff.cli import app

    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: save(obj, _SignalledWhileWriting(f, 4096)))

    def outside_the_command(signum, frame):
        raise AssertionError("SIGTERM reached the handler outside the command")

    before = signal.signal(signal.SIGTERM, outside_the_command)
    try:
        result = CliRunner().invoke(app, ["export", "--run", str(eval_runs["simclr"]), "--out",
                                          str(tmp_path / "x.pt")])
    finally:
        signal.signal(signal.SIGTERM, before)
    assert result.exit_code == 128 + signal.SIGTERM, (result.output, result.exception)
    assert "stopped by SIGTERM" in result.output and "unexpected pos" not in result.output
    assert list(tmp_path.iterdir()) == []
