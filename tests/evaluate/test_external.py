"""Anyone's encoder in MixDiff's evaluation: `--model timm/NAME | torchvision/NAME` with the
weights of a checkpoint from elsewhere, evaluated and reported beside a run."""

from __future__ import annotations

import argparse
import json

import pytest
import timm
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from mixdiff.cli import app
from mixdiff.errors import RunDirError, UnsafeFileError
from mixdiff.evaluate.external import load_external

runner = CliRunner()


def _torchvision_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)


def _same_weights(found, reference: nn.Module) -> bool:
    mine = found.network.module.state_dict()
    return all(torch.equal(mine[k], v) for k, v in reference.state_dict().items() if k in mine)


def _eval(command: str, model: str, checkpoint, out, toy, *extra):
    args = ["eval", command, "--model", model, "--checkpoint", str(checkpoint), "--out", str(out),
            "--image-size", "32", "--device", "cpu", "--num-workers", "0", *extra]
    if command == "robustness":
        args += ["--suite", "corruptions", "--root", str(toy["val"]), "--corruptions",
                 "gaussian_noise,sketch", "--severities", "2"]
    else:
        args += ["--train", str(toy["train"]), "--val", str(toy["val"])]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("model", ["timm/resnet18", "torchvision/resnet18"])
def test_a_library_network_from_local_weights_is_evaluated_and_reported_beside_a_run(
        eval_runs, tmp_path, model):
    toy = {"train": eval_runs["train"], "val": eval_runs["val"]}
    library, name = model.split("/")
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=10) if library == "timm" else \
        _torchvision_resnet18()
    checkpoint = tmp_path / "weights.pth"
    torch.save(net.state_dict(), checkpoint)
    out = tmp_path / "external"
    said = _eval("linear", model, checkpoint, out, toy)
    assert "dropped 2 tensor(s) of `fc (the classifier)`" in said
    _eval("knn", model, checkpoint, out, toy, "--k", "5")
    _eval("robustness", model, checkpoint, out, toy)
    encoder = json.loads((out / "encoder.json").read_text())
    assert encoder["model"] == model and encoder["label"] == f"{model} (weights.pth)"
    assert encoder["dropped"] == {"fc (the classifier)": 2} and encoder["image_size"] == 32
    for command, result in (("linear", "fashion"), ("knn", None), ("robustness", None)):
        found = sorted((out / "eval" / command).glob("*.json"))
        assert len(found) == 1, command
        saved = json.loads(found[0].read_text())
        assert saved["settings"]["model"] == model and saved["settings"]["image_size"] == 32
        assert saved["checkpoint"]["sha256"] == encoder["checkpoint_sha256"]
        assert (found[0].parent / saved["predictions"]).is_file()
    # the model's own preprocessing, at the size asked for
    transform = encoder["eval_transform"]
    assert ("timm's data config" if library == "timm" else "torchvision's") in transform
    # beside a run in the report, named by the model
    run = eval_runs["simclr"]
    for command in ("linear", "knn"):
        assert runner.invoke(app, ["eval", command, "--run", str(run), "--train", str(toy["train"]),
                                   "--val", str(toy["val"]), "--device", "cpu",
                                   "--num-workers", "0"]).exit_code == 0
    report = runner.invoke(app, ["report", str(run), str(out), "--out", str(tmp_path / "r")])
    assert report.exit_code == 0, report.output
    document = json.loads((tmp_path / "r" / "results.json").read_text())
    settings = {s["label"]: s["kind"] for s in document["settings"]}
    assert settings[f"{model} (weights.pth)"] == "external"
    rows = [r for r in document["rows"] if r["setting"] == f"{model} (weights.pth)"]
    assert {r["command"] for r in rows} >= {"linear", "knn", "robustness"}
    assert f"| {model} (weights.pth) |" in (tmp_path / "r" / "results.md").read_text()


def test_a_solo_learn_checkpoint_loads_its_backbone_and_says_what_it_drops(tmp_path):
    net = _torchvision_resnet18()
    state = {f"backbone.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state.update({"projector.0.weight": torch.zeros(8, 512), "projector.0.bias": torch.zeros(8),
                  "classifier.weight": torch.zeros(10, 512), "classifier.bias": torch.zeros(10)})
    path = tmp_path / "solo.ckpt"
    torch.save({"state_dict": state, "epoch": 399, "global_step": 1000,
                "hyper_parameters": {"method": "simclr", "backbone": {"name": "resnet18"}}}, path)
    found = load_external("torchvision/resnet18", path)
    assert _same_weights(found, net) and found.loaded.prefix == "backbone."
    assert found.loaded.format == "Lightning checkpoint (state_dict)"
    assert found.loaded.dropped == {"projector": 2, "classifier": 2}
    # a key of the backbone that matches nothing is named
    state["backbone.layer5.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, path)
    with pytest.raises(RunDirError, match="backbone.layer5.weight"):
        load_external("torchvision/resnet18", path)


def test_a_lightly_checkpoint_of_numbered_children_loads(tmp_path):
    net = _torchvision_resnet18()
    backbone = nn.Sequential(*list(net.children())[:-1])  # lightly's examples' backbone
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["projection_head.layers.0.weight"] = torch.zeros(4, 512)
    path = tmp_path / "lightly.ckpt"
    torch.save({"state_dict": state, "epoch": 10}, path)
    found = load_external("torchvision/resnet18", path)
    assert _same_weights(found, net) and found.loaded.dropped == {"projection_head": 1}
    # a missing block is named
    torch.save({"state_dict": {k: v for k, v in state.items() if ".7." not in k}}, path)
    with pytest.raises(RunDirError, match=r"has no weights for .* layer4"):
        load_external("torchvision/resnet18", path)


def test_dinos_official_checkpoint_loads_with_its_namespace_and_nothing_more(tmp_path):
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    teacher = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.zeros(4, 192)
    student = {f"module.{k}": torch.zeros_like(v) for k, v in teacher.items()}
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": teacher, "student": student, "epoch": 100,
                "args": argparse.Namespace(arch="vit_tiny", patch_size=16)}, path)
    found = load_external("timm/vit_tiny_patch16_224", path)
    assert found.weights == "teacher" and _same_weights(found, vit)
    assert found.loaded.dropped == {"head": 1}
    other = load_external("timm/vit_tiny_patch16_224", path, weights="student")
    assert other.weights == "student" and not _same_weights(other, vit)
    # any other class in the file is refused, Namespace or not
    torch.save({"teacher": teacher, "args": torch.nn.Identity()}, path)
    with pytest.raises(UnsafeFileError, match="torch.nn.modules.linear.Identity"):
        load_external("timm/vit_tiny_patch16_224", path)


def test_another_architecture_or_shape_is_one_clear_line(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_torchvision_resnet18().state_dict(), path)
    with pytest.raises(RunDirError, match="none of its .* tensors matches|has no weights for"):
        load_external("timm/vit_tiny_patch16_224", path)
    small = _torchvision_resnet18()
    small.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # solo-learn's CIFAR stem
    torch.save(small.state_dict(), path)
    with pytest.raises(RunDirError, match=r"conv1.weight: \(64, 3, 3, 3\) in the file"):
        load_external("torchvision/resnet18", path)


def test_options_that_do_not_go_together_are_refused_before_any_work(tmp_path, eval_runs):
    base = ["eval", "knn", "--train", str(eval_runs["train"]), "--val", str(eval_runs["val"])]
    for extra, message in (([], "give --run RUN"),
                           (["--model", "timm/resnet18"], "--model needs --out DIR"),
                           (["--run", str(eval_runs["simclr"]), "--checkpoint", "x.pth"],
                            "--checkpoint go with --model"),
                           (["--model", "keras/resnet", "--out", str(tmp_path / "o")],
                            "give timm/NAME")):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 2 and message in " ".join(result.output.split()), extra
    assert not (tmp_path / "o").exists()
    offline = runner.invoke(app, base + ["--model", "timm/resnet18", "--out",
                                         str(tmp_path / "hub")])
    assert offline.exit_code == 2 and "--checkpoint FILE" in " ".join(offline.output.split())
