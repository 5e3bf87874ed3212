"""What `generate` and `train-generator` trust from their own files: a manifest row's path only
inside OUT, the --model's content (a retrained model is a changed setting), and a model folder's
record of how its weights were made (never replaced by another training)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import yaml
from typer.testing import CliRunner

import tiny_pipelines
from conftest import make_tree
from mixdiff.cli import app
from mixdiff.errors import ConfigError, DatasetError, UnsafePathError
from mixdiff.generate.backends import model_fingerprint
from mixdiff.generate.embedded import GeneratorTraining, train_generator
from mixdiff.generate.runner import SettingsChangedError, generate
from mixdiff.generate.settings import GenerateSettings
from mixdiff.io import file_sha256
from mixdiff.outputs import ReplacingError

runner = CliRunner()
TINY = GeneratorTraining(resolution=16, block_out_channels=(8, 16), steps=3, batch_size=4,
                         warmup_steps=1, num_workers=0)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("records") / "real", per_class=1)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    return tiny_pipelines.sdedit_ddpm(tmp_path_factory.mktemp("ddpm") / "model")


def _settings(model, **extra) -> GenerateSettings:
    return GenerateSettings(generator="sdedit", model=str(model), steps=2, batch_size=3, **extra)


def _shard(out):
    return out / "manifests" / "shard-0-of-1.jsonl"


def _edit_rows(out, change) -> None:
    shard = _shard(out)
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    change(rows)
    shard.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_manifest_path_out_of_out_is_refused_not_counted_done(real, ddpm, tmp_path):
    """A row whose `path` is ../outside.jpg (a copy of its twin, so size and sha256 agree) was
    read from outside OUT and counted as done while the twin was missing."""
    out = tmp_path / "out"
    generate(real, out, _settings(ddpm), show_progress=False)
    first = json.loads(_shard(out).read_text().splitlines()[0])
    twin = out / first["path"]
    shutil.copy(twin, tmp_path / "outside.jpg")
    twin.unlink()

    def outside(rows):
        rows[0]["path"] = "../outside.jpg"
    _edit_rows(out, outside)
    with pytest.raises(UnsafePathError, match=rf"manifests: the row of {first['source']} "
                                              r"\(variant 0\): the path '../outside.jpg' leads "
                                              "outside") as refused:
        generate(real, out, _settings(ddpm), show_progress=False)
    assert "\n" not in str(refused.value)

    os.symlink(tmp_path / "outside.jpg", twin)  # the right name, but a link out of OUT

    def back(rows):
        rows[0]["path"] = first["path"]
    _edit_rows(out, back)
    with pytest.raises(UnsafePathError, match="leads outside"):
        generate(real, out, _settings(ddpm), show_progress=False)


@pytest.mark.parametrize("change, error, said", [
    (lambda row: row.update(source="../../elsewhere/a.png"), UnsafePathError,
     "line 1: the row's `source`: the path '../../elsewhere/a.png' leads outside"),
    (lambda row: row.update(source="/etc/passwd"), UnsafePathError,
     "line 1: the row's `source`: the path '/etc/passwd' leads outside"),
    (lambda row: row.pop("variant"), DatasetError,
     "line 1: not a row of `mixdiff generate` (no valid variant)"),
])
def test_a_manifest_row_whose_source_leads_out_of_the_tree_is_refused(real, ddpm, tmp_path,
                                                                      change, error, said):
    """GM-src: a row's `source` (relative to the real tree) edited to lead out of it was
    taken into the merged manifest; a row without its fields was a KeyError."""
    out = tmp_path / "out"
    generate(real, out, _settings(ddpm), show_progress=False)
    _edit_rows(out, lambda rows: change(rows[0]))
    with pytest.raises(error, match=re.escape(f"{_shard(out)}, {said}")) as refused:
        generate(real, out, _settings(ddpm), show_progress=False)
    assert "\n" not in str(refused.value)


def test_a_manifest_row_naming_another_twin_does_not_make_its_own(real, ddpm, tmp_path):
    out = tmp_path / "out"
    generate(real, out, _settings(ddpm), show_progress=False)
    rows = [json.loads(line) for line in _shard(out).read_text().splitlines()]
    (out / rows[0]["path"]).unlink()

    def borrow(rows):
        rows[0].update({k: rows[1][k] for k in ("path", "sha256", "bytes")})
    _edit_rows(out, borrow)
    again = generate(real, out, _settings(ddpm), show_progress=False)
    assert (again.written, again.skipped) == (1, 2)
    assert (out / rows[0]["path"]).is_file()


def test_a_retrained_model_is_a_changed_setting(real, tmp_path):
    """Re-running generate after its --model folder was trained again: refused, naming the
    model's fingerprint, never "already there" with the old model's twins."""
    model, out = tmp_path / "model", tmp_path / "out"
    tiny_pipelines.sdedit_ddpm(model)
    generate(real, out, _settings(model), show_progress=False)
    first = model_fingerprint(str(model))
    assert {json.loads(line)["model_sha256"] for line in
            (out / "manifest.jsonl").read_text().splitlines()} == {first}
    assert yaml.safe_load((out / "generate.yaml").read_text())["model_sha256"] == first
    shutil.rmtree(model)
    tiny_pipelines.sdedit_ddpm(model, channels=1)  # the same folder, trained anew
    with pytest.raises(SettingsChangedError, match=rf"model_sha256: '{first}' -> '"):
        generate(real, out, _settings(model), show_progress=False)
    fresh = generate(real, out, _settings(model), overwrite=True, show_progress=False)
    assert fresh.written == 3


def test_an_out_from_before_the_fingerprint_is_taken_as_it_is(real, ddpm, tmp_path):
    """generate.yaml without model_sha256 (written before it was recorded): unknown, not a
    changed setting."""
    out = tmp_path / "out"
    generate(real, out, _settings(ddpm), show_progress=False)
    saved = yaml.safe_load((out / "generate.yaml").read_text())
    del saved["model_sha256"]
    (out / "generate.yaml").write_text(yaml.safe_dump(saved))
    again = generate(real, out, _settings(ddpm), show_progress=False)
    assert (again.written, again.skipped) == (0, 3)


def test_train_generator_never_replaces_weights_trained_otherwise(real, tmp_path):
    model = tmp_path / "ddpm"
    record = train_generator(real, model, TINY, show_progress=False)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    trained = file_sha256(weights)
    again = train_generator(real, model, TINY, show_progress=False)  # nothing to do
    assert again == json.loads(json.dumps(record)) and file_sha256(weights) == trained
    for change, said in ((dict(seed=1), "seed: 0 -> 1"), (dict(steps=4), "steps: 3 -> 4")):
        with pytest.raises(ConfigError, match=f"other settings .*{said}.* Use another --out, "
                                              f"or delete {model}"):
            train_generator(real, model, GeneratorTraining(**{**TINY.__dict__, **change}),
                            show_progress=False)
    other = make_tree(tmp_path / "other", per_class=1)
    with pytest.raises(ConfigError, match="data: "):
        train_generator(other, model, TINY, show_progress=False)
    result = runner.invoke(app, ["train-generator", "--data", str(real), "--out", str(model),
                                 "--seed", "5"])
    assert result.exit_code == 2 and "seed: 0 -> 5" in result.output
    assert len(result.output.strip().splitlines()) == 1
    (model / "training.json").unlink()  # weights no record describes: unknown, kept
    with pytest.raises(ConfigError, match="no readable training.json"):
        train_generator(real, model, TINY, show_progress=False)
    assert file_sha256(weights) == trained


def test_a_full_disk_while_saving_the_generator_leaves_no_half_written_model(real, tmp_path,
                                                                             monkeypatch):
    """FD11: a full disk during `train-generator` was a SafetensorError traceback, and left
    unet/config.json behind, which the re-run then took for weights without a record (FD11c).
    Now: one line naming the folder, which holds nothing of the model; the re-run trains."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    from mixdiff.cli._app import path_problem

    def full(tensors, filename, metadata=None):
        open(filename, "wb").write(b"the first bytes")
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    model = tmp_path / "ddpm"
    with monkeypatch.context() as patched:
        patched.setattr(safetensors.torch, "save_file", full)
        with pytest.raises(OSError) as refused:
            train_generator(real, model, TINY, show_progress=False)
    assert refused.value.errno == errno.ENOSPC and refused.value.filename == str(model)
    assert path_problem(refused.value).startswith(f"{model}: the disk is full")
    assert list(model.iterdir()) == []  # nothing of the model, and no temporary
    train_generator(real, model, TINY, show_progress=False)  # not mistaken for trained weights
    assert (model / "training.json").is_file() and (model / "unet").is_dir()


def _contents(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("linked", ["v0", "v0/circle", "manifests"])
def test_a_folder_of_out_linked_elsewhere_is_refused_before_writing(real, ddpm, tmp_path,
                                                                    linked):
    """OUT/v0, a class folder OUT/v0/circle or OUT/manifests a link to a user's folder
    elsewhere: the twins (or manifest rows) were written through it, over the user's files. Now
    one line naming the link and where it leads, nothing written there (nor in OUT); OUT itself
    a link is fine."""
    out, elsewhere = tmp_path / "out", tmp_path / "photos"
    for name in ("img00.jpg", "circle/img00.jpg", "shard-0-of-1.jsonl"):
        (elsewhere / name).parent.mkdir(parents=True, exist_ok=True)
        (elsewhere / name).write_text("the user's\n")
    before = _contents(elsewhere)
    (out / linked).parent.mkdir(parents=True)
    os.symlink(elsewhere, out / linked)
    with pytest.raises(UnsafePathError) as refused:
        generate(real, out, _settings(ddpm), show_progress=False)
    said = str(refused.value)
    assert "\n" not in said
    assert said.startswith(f"{out / linked} is a link to {elsewhere}, outside the output folder "
                           f"{out}") and "Replace the link by a folder" in said
    assert _contents(elsewhere) == before
    assert sorted(p.name for p in out.iterdir()) == [linked.split("/")[0]]
    result = runner.invoke(app, ["generate", "--real", str(real), "--out", str(out),
                                 "--generator", "sdedit", "--model", str(ddpm), "--steps", "2"])
    assert result.exit_code == 2 and "is a link to" in result.output, result.output
    assert _contents(elsewhere) == before

    (out / linked).unlink()
    moved = tmp_path / "disk" / "out"
    moved.parent.mkdir()
    os.symlink(moved, tmp_path / "linked-out")  # OUT itself a link: written where it leads
    moved.mkdir()
    done = generate(real, tmp_path / "linked-out", _settings(ddpm), show_progress=False)
    assert done.written == 3 and (moved / "manifest.jsonl").is_file()


def test_a_fresh_out_holding_files_under_v_k_is_refused(real, ddpm, tmp_path):
    """LOST: `generate --out` a folder that no generate wrote (no generate.yaml, no manifest)
    but that holds a user's file at a twin's path (OUT/v0/circle/img00.jpg): silently replaced.
    Now refused before any work, --overwrite too, naming the file; files beside v<k>/ are no
    twin's and are fine."""
    out = tmp_path / "out"
    (out / "v0" / "circle").mkdir(parents=True)
    theirs = out / "v0" / "circle" / "img00.jpg"
    theirs.write_text("the user's\n")
    for overwrite in (False, True):
        with pytest.raises(ReplacingError) as refused:
            generate(real, out, _settings(ddpm), overwrite=overwrite, show_progress=False)
        said = str(refused.value)
        assert "\n" not in said and f"--out {out} holds {theirs}, which no `mixdiff generate` " \
            "wrote" in said and "give another --out, or move them" in said
    assert theirs.read_text() == "the user's\n"
    assert sorted(p.name for p in out.iterdir()) == ["v0"]  # no lock, record or manifest
    theirs.unlink()
    mine = out / "manifest.jsonl"  # a user's file of generate's merged manifest's name
    mine.write_text('{"mine": 1}\n')
    with pytest.raises(ReplacingError, match="manifest.jsonl, which no `mixdiff generate` wrote"):
        generate(real, out, _settings(ddpm), show_progress=False)
    assert mine.read_text() == '{"mine": 1}\n'
    mine.unlink()
    (out / "notes.txt").write_text("beside the twins\n")
    assert generate(real, out, _settings(ddpm), show_progress=False).written == 3
