"""Nothing read from a file runs code: every torch file is read by `mixdiff.torch_files` with
weights_only=True; a file that asks for more is one line naming it and what it asks for."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import torch

import mixdiff
from mixdiff import torch_files
from mixdiff.errors import TorchFileError, UnsafeFileError
from mixdiff.torch_files import load_torch_file

from conftest import RunsCode, save_malicious

SRC = Path(mixdiff.__file__).parent
LOADER = SRC / "torch_files.py"


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_torch_load_in_src_goes_through_the_one_weights_only_loader():
    """No module but torch_files calls torch.load (or another unpickler), none passes
    weights_only=False, and the loader's own call says weights_only=True."""
    unpicklers = ("torch.load", "torch.serialization.load", "pickle.load", "pickle.loads",
                  "torch.jit.load", "yaml.load", "yaml.unsafe_load", "dill.load", "joblib.load")
    found, loader_calls = [], []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle") and \
                    any(alias.name in ("load", "loads") for alias in node.names):
                found.append(f"{path.name}:{node.lineno} imports {node.module}.load")
        for call, name in _calls(tree):
            where = f"{path.relative_to(SRC)}:{call.lineno} {name}"
            keywords = {k.arg: k.value for k in call.keywords}
            if "weights_only" in keywords and not (
                    isinstance(keywords["weights_only"], ast.Constant)
                    and keywords["weights_only"].value is True):
                found.append(f"{where}(weights_only={ast.unparse(keywords['weights_only'])})")
            if name == "torch.load" and path == LOADER:
                loader_calls.append(call)
            elif name in unpicklers or (name.endswith(".load") and "allow_pickle" in keywords
                                        and not (isinstance(keywords["allow_pickle"],
                                                            ast.Constant)
                                                 and keywords["allow_pickle"].value is False)):
                found.append(where)  # numpy's load may unpickle unless told allow_pickle=False
    assert not found, f"unpickling outside mixdiff.torch_files: {found}"
    assert len(loader_calls) == 1  # and it is weights_only=True (checked above)
    assert any(k.arg == "weights_only" for k in loader_calls[0].keywords)


@pytest.mark.parametrize("scanned", [True, False], ids=["scanned", "scan-missed"])
@pytest.mark.parametrize("what", ["checkpoint", "linear probe", "feature cache"])
def test_a_malicious_file_is_one_line_and_runs_nothing(tmp_path, monkeypatch, what, scanned):
    """Refused by the static scan of its pickle, and, were the scan to miss it, by torch's
    weights-only unpickler: the same line either way."""
    if not scanned:
        monkeypatch.setattr(torch_files, "_asked_for", lambda path: [])
    marker = tmp_path / "ran"
    path = save_malicious(tmp_path / "file.pt", marker, {"features": torch.zeros(2)})
    with pytest.raises(UnsafeFileError) as refused:
        load_torch_file(path, what, "Do this instead")
    said = str(refused.value)
    assert not marker.exists()
    assert "\n" not in said and str(path) in said and "posix.system" in said
    assert f"a {what} may not run code" in said and said.endswith("Do this instead")
    assert "weights_only=False" not in said


def test_an_instruction_the_safe_reader_lacks_is_refused_in_one_line(tmp_path):
    """Pickle protocol 4 (STACK_GLOBAL, MEMOIZE) hides its globals from the static scan: torch's
    weights-only unpickler refuses it, and its advice (weights_only=False) is not passed on."""
    marker = tmp_path / "ran"
    path = tmp_path / "p4.ckpt"
    torch.save({"x": RunsCode(marker)}, path, pickle_protocol=4)
    with pytest.raises(UnsafeFileError) as refused:
        load_torch_file(path, "checkpoint")
    said = str(refused.value)
    assert not marker.exists() and "\n" not in said and "weights_only=False" not in said
    assert str(path) in said and "may not run code" in said


def test_a_harmless_class_is_allowed_only_where_it_is_named(tmp_path):
    """The official DINO checkpoints hold an argparse.Namespace: allowed for the load that names
    it, refused elsewhere, and never kept allowed afterwards."""
    path = tmp_path / "dino.pth"
    torch.save({"teacher": {"w": torch.ones(2)}, "args": argparse.Namespace(arch="vit_small")},
               path)
    with pytest.raises(UnsafeFileError, match="asks for argparse.Namespace"):
        load_torch_file(path, "checkpoint")
    loaded = load_torch_file(path, "checkpoint", allow=[argparse.Namespace])
    assert loaded["args"].arch == "vit_small" and torch.equal(loaded["teacher"]["w"],
                                                              torch.ones(2))
    with pytest.raises(UnsafeFileError, match="argparse.Namespace"):
        load_torch_file(path, "checkpoint")  # the allowance went with that load
    hostile = save_malicious(tmp_path / "both.pth", tmp_path / "ran",
                             {"args": argparse.Namespace(arch="x")})
    with pytest.raises(UnsafeFileError, match="posix.system"):
        load_torch_file(hostile, "checkpoint", allow=[argparse.Namespace])
    assert not (tmp_path / "ran").exists()


def test_classes_another_library_allowed_process_wide_are_not_allowed_here(tmp_path):
    """torch keeps one allow-list per process; what a library adds there is not ours to allow
    (and is put back afterwards)."""
    path = tmp_path / "ns.pt"
    torch.save({"args": argparse.Namespace(a=1)}, path)
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        with pytest.raises(UnsafeFileError, match="argparse.Namespace"):
            load_torch_file(path, "checkpoint")
        assert argparse.Namespace in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_damaged_and_foreign_files_are_one_line(tmp_path):
    legacy = tmp_path / "old.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    text = tmp_path / "text.pt"
    text.write_text("hello\n")
    for path, expected in ((legacy, "format from before PyTorch 1.6"),
                           (text, "is not a PyTorch feature cache"),
                           (tmp_path / "none.pt", "feature cache not found")):
        with pytest.raises(TorchFileError, match=expected) as refused:
            load_torch_file(path, "feature cache")
        assert "\n" not in str(refused.value)
