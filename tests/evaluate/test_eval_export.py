"""`mixdiff export`: the exported state dict loads strictly into a plain torchvision / timm model,
in a fresh Python process that never imports MixDiff, and gives the encoder's features."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.evaluate.features import Encoder, ImageSet
from mixdiff.evaluate.options import EncodeOptions
from mixdiff.evaluate.export import export_backbone
from mixdiff.pretrain.train import pretrain

from conftest import make_tree, tiny_overrides

# run in a fresh interpreter: follow each .json's recipe with torchvision/timm alone
PLAIN_LOAD = """
import json, os, sys
import torch
from PIL import Image
from torchvision.transforms import v2

for job in json.loads(sys.argv[1]):  # {"recipe", "out", "images"}
    recipe = json.load(open(job["recipe"]))
    os.chdir(os.path.dirname(job["recipe"]))
    exec(recipe["load"])
    p = recipe["preprocessing"]
    transform = v2.Compose([v2.Resize(p["resize_short_side"], antialias=p["antialias"]),
                            v2.CenterCrop(p["center_crop"]),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(p["mean"], p["std"])])
    images = [transform(v2.PILToTensor()(Image.open(f).convert("RGB"))) for f in job["images"]]
    with torch.no_grad():
        torch.save(model(torch.stack(images)), job["out"])
assert not [m for m in sys.modules if m.startswith("mixdiff")], "MixDiff was imported"
"""


@pytest.fixture(scope="module")
def vit_run(tiny_data, tmp_path_factory):
    return pretrain(load_config(None, tiny_overrides(tiny_data, **{
        "model.backbone": "vit_tiny", "model.patch_size": 4})), tmp_path_factory.mktemp("vit"))


def _plain_features(jobs: list[tuple], tmp_path) -> list[torch.Tensor]:
    """Features of each (recipe, ImageSet) computed by PLAIN_LOAD in one fresh interpreter."""
    script = tmp_path / "plain_load.py"
    script.write_text(PLAIN_LOAD)
    spec = [{"recipe": str(recipe), "out": str(tmp_path / f"plain{i}.pt"),
             "images": list(images.paths)} for i, (recipe, images) in enumerate(jobs)]
    subprocess.run([sys.executable, str(script), json.dumps(spec)], check=True,
                   capture_output=True, text=True)
    return [torch.load(job["out"]) for job in spec]


def test_exports_give_the_encoders_features_in_plain_torchvision_and_timm(eval_runs, vit_run,
                                                                          tmp_path):
    images = ImageSet.from_tree(make_tree(tmp_path / "imgs" / "test", 2, seed=7))
    jobs, expected = [], []
    for run, fmt, suffix, weights in ((eval_runs["dino"], "torchvision", ".safetensors", None),
                                      (eval_runs["dino"], "timm", ".pt", "student"),
                                      (vit_run, None, ".safetensors", None)):
        out = tmp_path / f"{len(jobs)}" / f"model{suffix}"
        if fmt is None:  # through the command line, with its default format
            result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(out)])
            assert result.exit_code == 0, result.output
            recipe = out.with_suffix(".json")
        else:
            recipe = export_backbone(run, out, fmt, weights)[1]
        saved = json.loads(recipe.read_text())
        encoder = Encoder.from_run(run, weights, "cpu")
        assert saved["source"]["weights"] == encoder.weights == (weights or encoder.weights)
        jobs.append((recipe, images))
        expected.append(encoder.encode(images, options=EncodeOptions(num_workers=0)))
    loads = [json.loads(recipe.read_text())["load"] for recipe, _ in jobs]
    assert all("model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3" in load  # the small stem
               for load in loads[:2])
    assert "torchvision.models.resnet18()" in loads[0] and "timm.create_model('resnet18'" in \
        loads[1] and "timm.create_model('vit_tiny_patch16_224'" in loads[2]
    for plain, features in zip(_plain_features(jobs, tmp_path), expected):
        assert torch.allclose(plain, features, rtol=0, atol=1e-6)


def test_export_refusals_are_one_line(vit_run, tmp_path):
    refused = CliRunner().invoke(app, ["export", "--run", str(vit_run), "--out",
                                       str(tmp_path / "v.pt"), "--format", "torchvision"])
    assert refused.exit_code == 2 and "export it with --format timm" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    bad_suffix = CliRunner().invoke(app, ["export", "--run", str(vit_run), "--out",
                                          str(tmp_path / "v.bin")])
    assert bad_suffix.exit_code == 2 and ".safetensors, .pt, .pth" in bad_suffix.output


def test_export_never_replaces_a_file_another_command_wrote(eval_runs, tmp_path):
    """`--out RUN/data.safetensors` replaced the run's data.json with the recipe. An export
    replaces only an earlier export: not a run folder's own files, not a file of someone else."""
    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run, copy_function=os.link)  # a rename breaks the link
    own = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    (tmp_path / "model.pt").write_bytes(b"someone else's")
    for out, said in ((run / "data.safetensors", "own files"),
                      (run / "eval" / "knn" / "backbone.pt", "own files"),
                      (run / "checkpoints" / "last.pt", "own files"),
                      (tmp_path / "notes.safetensors", f"{notes} exists and was not written by"),
                      (tmp_path / "model.pt", "model.pt exists and was not written by")):
        result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(out)])
        assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not out.exists() or out == tmp_path / "model.pt"  # nothing written
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == own
    assert notes.read_text() == '{"mine": 1}\n'
    assert (tmp_path / "model.pt").read_bytes() == b"someone else's"
    beside = run / "backbone.safetensors"  # beside the run's files is fine, and again
    for _ in range(2):
        result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(beside)])
        assert result.exit_code == 0, result.output
    assert json.loads(beside.with_suffix(".json").read_text())["file"] == beside.name


def test_export_of_a_run_still_training_is_warned_about_and_recorded(eval_runs, tmp_path):
    """`export` of a run that `mixdiff pretrain` still trains said nothing (eval warns): now the
    same warning, of which epoch, and the recipe records it (source.checkpoint.unfinished);
    once the run is done, nothing is said."""
    from mixdiff.lock import exclusive

    run = tmp_path / "run"
    shutil.copytree(eval_runs["simclr"], run)  # a copy: the lock below writes in it
    out = tmp_path / "model.safetensors"
    with exclusive(run, "mixdiff pretrain"):  # as the training process holds it
        early = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(out)])
    said = " ".join(early.output.split())
    assert early.exit_code == 0, early.output
    assert f"warning: {run} is still being trained (`mixdiff pretrain` (pid" in said
    assert "the exported backbone is of epoch 1 of 1 and will be out of date" in said
    assert "source.checkpoint.unfinished" in said
    unfinished = json.loads(out.with_suffix(".json").read_text())["source"]["checkpoint"][
        "unfinished"]
    assert (unfinished["epoch"], unfinished["max_epochs"]) == (1, 1)
    done = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(out)])
    assert done.exit_code == 0 and "still being trained" not in done.output
    assert "unfinished" not in json.loads(out.with_suffix(".json").read_text())["source"][
        "checkpoint"]
