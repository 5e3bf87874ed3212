"""`mixdiff attention` on tiny real ViT runs (16 px images, 4 px patches: a 4 x 4 grid, 3 heads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from typer.testing import CliRunner

from conftest import tiny_overrides
from mixdiff.cli import app
from mixdiff.config import load_config
from mixdiff.data.tree import load_rgb
from mixdiff.evaluate.attention import (attention_maps, cls_patch_attention, head_entropy,
                                        last_block_attention, run_attention, threshold_masks)
from mixdiff.evaluate.features import Encoder
from mixdiff.pretrain.train import pretrain

runner = CliRunner()
VIT = {"model.backbone": "vit_tiny", "model.patch_size": 4}


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("attention_runs")
    made = {}
    for name, extra in (("dino-vit", {"method": "dino", "augment.recipe": "dino", **VIT}),
                        ("simclr-vit", {"data.mode": "mixdiff", **VIT}),
                        ("simclr-resnet", {})):
        made[name] = pretrain(load_config(None, tiny_overrides(tiny_data, **extra)), base / name)
    return made


@pytest.fixture(scope="module")
def batch(tiny_data, runs):
    """The DINO run's teacher ViT and three val images through its evaluation transform."""
    encoder = Encoder.from_run(runs["dino-vit"], device="cpu")
    paths = sorted(tiny_data["val"].rglob("*.png"))[:3]
    images = torch.stack([encoder.transform(v2.PILToTensor()(load_rgb(p))) for p in paths])
    return encoder.backbone, images, paths


def test_attention_rows_are_distributions_per_head(batch):
    vit, images, _ = batch
    attention = last_block_attention(vit, images)
    tokens = 1 + 4 * 4  # class token + patches
    assert attention.shape == (3, vit.blocks[-1].attn.num_heads, tokens, tokens)
    assert torch.allclose(attention.sum(-1), torch.ones(attention.shape[:-1]), atol=1e-5)
    maps = cls_patch_attention(vit, images)
    assert maps.shape == (3, 3, 4, 4)  # images x heads x h x w
    assert torch.allclose(maps.flatten(-2).sum(-1) + attention[:, :, 0, 0], torch.ones(3, 3),
                          atol=1e-5)  # the patches' share plus the class token's own


def test_attention_equals_timms_unfused_softmax(batch):
    """A second, independent way: timm's own non-fused path, with the softmax it computes
    caught at the attention dropout (an identity in eval mode) of the last block."""
    vit, images, _ = batch
    attn = vit.blocks[-1].attn
    caught = []
    handle = attn.attn_drop.register_forward_hook(lambda m, args, out: caught.append(out))
    attn.fused_attn = False
    try:
        with torch.no_grad():
            vit.forward_features(images)
    finally:
        attn.fused_attn = True
        handle.remove()
    ours = last_block_attention(vit, images)
    assert ours.shape == caught[0].shape
    assert torch.allclose(ours, caught[0], atol=1e-6)
    assert not torch.allclose(ours[:, 0], ours[:, 1], atol=1e-3)  # heads differ: a real model


def _dino_masks(attention: torch.Tensor, threshold: float) -> torch.Tensor:
    """DINO's visualize_attention.py, as written there: sort ascending, keep cumval > 1 - t."""
    flat = attention.flatten(-2)
    values, order = torch.sort(flat)
    values = values / values.sum(-1, keepdim=True)
    kept_sorted = values.cumsum(-1) > (1 - threshold)
    kept = torch.zeros_like(kept_sorted)
    for index in np.ndindex(*flat.shape[:-1]):
        kept[index][order[index]] = kept_sorted[index]
    return kept.reshape(attention.shape)


@pytest.mark.parametrize("threshold", [0.6, 0.3, 0.9])
def test_masks_keep_the_threshold_of_the_mass_and_are_minimal(batch, threshold):
    vit, images, _ = batch
    real = cls_patch_attention(vit, images)
    random = torch.rand(5, 6, 7, 7) ** 4
    for attention in (real, random):
        masks = threshold_masks(attention, threshold)
        assert masks.shape == attention.shape and masks.dtype == torch.bool
        flat, kept = attention.flatten(-2), masks.flatten(-2)
        share = (flat * kept).sum(-1) / flat.sum(-1)
        assert (share >= threshold - 1e-6).all()
        smallest_kept = torch.where(kept, flat, torch.inf).min(-1).values
        assert (share - smallest_kept / flat.sum(-1) < threshold).all()  # one fewer is too few
        assert torch.equal(masks, _dino_masks(attention, threshold))


def test_best_head_is_the_most_concentrated(batch):
    vit, images, _ = batch
    maps = attention_maps(vit, images, 0.6)
    for m in maps:
        p = m.attention.flatten(-2) / m.attention.flatten(-2).sum(-1, keepdim=True)
        entropy = -(p * p.log()).sum(-1)
        assert torch.allclose(m.entropy, entropy, atol=1e-5)
        assert m.best_head == int(entropy.argmin())
        attention, mask = m.upsampled((16, 16))
        assert attention.shape == mask.shape == (16, 16)
        assert torch.equal(mask[::4, ::4], m.masks[m.best_head])  # one 4 x 4 block per patch
    sharp = torch.zeros(2, 3, 3)
    sharp[0] = 1.0
    sharp[1, 1, 1] = 1.0
    sharp[1] += 1e-3
    assert head_entropy(sharp).argmin() == 1


def test_figure_of_runs_side_by_side(runs, batch, tmp_path):
    _, _, paths = batch
    out = tmp_path / "attention.png"
    # a shell glob gives one --images and the rest as arguments (runs likewise)
    args = ["attention", "--run", str(runs["dino-vit"]), str(runs["simclr-vit"]),
            "--out", str(out), "--device", "cpu", "--images", *map(str, paths)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "dino-vit (teacher)" in result.output and "simclr-vit (student)" in result.output
    figure = np.asarray(Image.open(out).convert("RGB"), dtype=float)
    assert figure.shape[1] > 300 and figure.shape[0] > 300 and figure.std() > 20
    student = run_attention(runs["dino-vit"], paths, weights="student", device="cpu")
    assert student.weights == "student" and len(student.maps) == 3
    assert student.images.shape == (3, 3, 16, 16) and 0 <= student.images.min()


def test_a_timm_vit_with_dinos_checkpoint_gets_a_column_beside_the_runs(runs, batch, tmp_path):
    import timm

    _, _, paths = batch
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    checkpoint = tmp_path / "dino.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in vit.state_dict().items()}}, checkpoint)
    out = tmp_path / "attention.png"
    result = runner.invoke(app, ["attention", "--run", str(runs["dino-vit"]), "--model",
                                 "timm/vit_tiny_patch16_224", "--checkpoint", str(checkpoint),
                                 "--out", str(out), "--device", "cpu",
                                 "--images", *map(str, paths[:2])])
    assert result.exit_code == 0, result.output
    assert "timm/vit_tiny_patch16_224 (dino.pth) (teacher)" in result.output
    assert Image.open(out).size[0] > 300
    alone = runner.invoke(app, ["attention", "--checkpoint", str(checkpoint), "--run",
                                str(runs["dino-vit"]), "--out", str(out),
                                "--images", str(paths[0])])
    assert alone.exit_code == 2 and "--checkpoint goes with --model" in alone.output


def test_resnet_run_and_bad_threshold_give_one_line(runs, batch, tmp_path):
    _, _, paths = batch
    result = runner.invoke(app, ["attention", "--run", str(runs["simclr-resnet"]), "--images",
                                 str(paths[0]), "--out", str(tmp_path / "a.png"), "--device",
                                 "cpu"])
    assert result.exit_code == 2 and "ResNet" in result.output and "ViT" in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message, wrapped at most
    result = runner.invoke(app, ["attention", "--run", str(runs["dino-vit"]), "--images",
                                 str(paths[0]), "--out", str(tmp_path / "a.png"),
                                 "--threshold", "1.5"])
    assert result.exit_code == 2 and "--threshold" in result.output
    assert not (tmp_path / "a.png").exists()


def test_mask_outline_follows_the_patch_edges():
    from mixdiff.report.attention_grid import mask_outline

    single = np.zeros((4, 4), bool)
    single[1, 2] = True
    segments = mask_outline(single, (16, 16))  # 4 px per patch
    assert len(segments) == 4
    xs = {x for segment in segments for x, _ in segment}
    ys = {y for segment in segments for _, y in segment}
    assert xs == {7.5, 11.5} and ys == {3.5, 7.5}  # pixel edges around patch (1, 2)
    pair = np.zeros((4, 4), bool)
    pair[0, 0] = pair[0, 1] = True
    assert len(mask_outline(pair, (16, 16))) == 6  # the shared edge is not drawn
    assert len(mask_outline(np.ones((4, 4), bool), (8, 8))) == 16  # the border only
