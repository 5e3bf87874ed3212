"""Atomic writes: whole files or none, and an error that names the file asked for."""

import errno
import tempfile

import pytest

from mixdiff.io import atomic_write_text


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
