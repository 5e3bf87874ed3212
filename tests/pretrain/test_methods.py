"""The parts of each method that follow the reference implementations: heads, schedules, DINO's
teacher (EMA of parameters only, batch statistics, no stochastic depth), its gradient clipping
and online kNN, the view recipes."""

import csv
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision.transforms import v2

from mixdiff.config import load_config
from mixdiff.pretrain.input.views import build_views
from mixdiff.pretrain.methods import METHODS
from mixdiff.pretrain.methods.base import VAL
from mixdiff.models import DINOHead, projection_mlp
from mixdiff.schedules import cosine, warmup_cosine
from mixdiff.pretrain.train import pretrain

from conftest import tiny_overrides

DINO = {"method": "dino", "augment.recipe": "dino"}


def _module(tiny_data, **extra):
    cfg = load_config(None, tiny_overrides(tiny_data, **extra))
    return METHODS[cfg.method](OmegaConf.to_container(cfg, resolve=True), 3)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# --- heads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_projection_mlp_has_the_asked_number_of_linear_layers(layers):
    head = projection_mlp(8, 16, 4, layers=layers)
    assert len(_linears(head)) == layers
    assert head(torch.randn(5, 8)).shape == (5, 4)
    assert [m.out_features for m in _linears(head)] == [16] * (layers - 1) + [4]


def test_method_projectors_follow_proj_layers(tiny_data):
    barlow = _module(tiny_data, method="barlow_twins")
    assert len(_linears(barlow.projector)) == 3  # Barlow Twins' paper default
    two = _module(tiny_data, method="barlow_twins", **{"barlow_twins.proj_layers": 2})
    assert len(_linears(two.projector)) == 2
    assert len(_linears(_module(tiny_data).projector)) == 2  # SimCLR


def test_imagenet100_presets_use_the_authors_two_layer_projector():
    for name in ("simclr", "barlow_twins"):
        cfg = load_config(f"configs/imagenet100/{name}_real.yaml", ["data.real=/r"])
        section = cfg[name]
        assert (section.proj_layers, section.proj_hidden_dim, section.proj_output_dim) == \
            (2, 2048, 512)


def test_dino_head_last_layer_is_normalised_and_frozen_in_norm():
    head = DINOHead(8, 16, 4, 10, norm_last_layer=True)
    out = head(torch.randn(3, 8))
    assert out.shape == (3, 10)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert torch.allclose(magnitude, torch.ones_like(magnitude)) and not magnitude.requires_grad
    free = DINOHead(8, 16, 4, 10, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


# --- schedules -----------------------------------------------------------------------------
def test_warmup_cosine_and_cosine():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, 0.01) == pytest.approx(0.01)
    assert cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert cosine(25, 100, 0.996, 1.0) == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)


def test_dino_weight_decay_follows_its_cosine_schedule_and_is_logged(tiny_data, tmp_path):
    run = pretrain(load_config(None, tiny_overrides(tiny_data, **DINO, **{
        "optim.weight_decay": 0.04, "optim.weight_decay_end": 0.4, "trainer.max_epochs": 3,
        "trainer.logger": "none"})), tmp_path / "run")
    with open(run / "metrics.csv", newline="") as handle:
        decay = [float(r["train/weight_decay"]) for r in csv.DictReader(handle)]
    assert len(decay) == 3 and 0.04 <= decay[0] < decay[1] < decay[2] <= 0.4


# --- DINO's teacher ------------------------------------------------------------------------
def test_teacher_ema_moves_parameters_and_keeps_its_own_batchnorm_statistics(tiny_data,
                                                                             monkeypatch):
    dino = _module(tiny_data, **DINO)
    teacher_before = [p.clone() for p in dino.teacher_backbone.parameters()]
    with torch.no_grad():
        for p in dino.backbone.parameters():
            p.add_(1.0)
        for b in dino.backbone.buffers():
            if b.dtype.is_floating_point:
                b.add_(5.0)
    teacher_buffers = [b.clone() for b in dino.teacher_backbone.buffers()]
    monkeypatch.setattr(type(dino), "momentum", lambda self: 0.75)
    dino.update_teacher()
    for before, teacher, student in zip(teacher_before, dino.teacher_backbone.parameters(),
                                        dino.backbone.parameters()):
        assert torch.allclose(teacher, 0.75 * before + 0.25 * student)
    for before, after in zip(teacher_buffers, dino.teacher_backbone.buffers()):
        assert torch.equal(before, after)  # not copied from the student


def test_resnet_teacher_normalises_with_batch_statistics(tiny_data):
    dino = _module(tiny_data, **DINO).train()
    assert dino.teacher_backbone.training  # train mode: BatchNorm uses the batch's statistics
    bn = dino.teacher_backbone.bn1
    before = bn.running_mean.clone()
    views = [torch.randn(4, 3, 16, 16) * 3 + 1, torch.randn(4, 3, 16, 16)]
    dino.ssl_loss(views, dino.encode_views(views), torch.arange(4),
                  torch.zeros(4, 2, dtype=torch.long))
    assert not torch.equal(before, bn.running_mean)  # its own statistics, from its own batches


def test_student_vit_has_stochastic_depth_and_the_teacher_none(tiny_data):
    dino = _module(tiny_data, **DINO, **{"model.backbone": "vit_tiny", "model.patch_size": 4,
                                         "model.drop_path_rate": 0.1})
    student_rates = [b.drop_path1.drop_prob for b in dino.backbone.blocks
                     if hasattr(b.drop_path1, "drop_prob")]
    assert student_rates and max(student_rates) == pytest.approx(0.1)
    assert all(isinstance(b.drop_path1, nn.Identity) for b in dino.teacher_backbone.blocks)


def test_dino_clips_each_student_gradient_and_never_the_probe(tiny_data):
    dino = _module(tiny_data, **DINO, **{"dino.clip_grad": 3.0})
    for p in dino.parameters():
        p.grad = torch.randn_like(p) * 100 if p.requires_grad else None
    probe_grad = dino.probe.weight.grad.clone()
    dino.configure_gradient_clipping(None)
    norms = [p.grad.norm().item() for n, p in dino.named_parameters()
             if p.grad is not None and not n.startswith("probe.")]
    assert max(norms) <= 3.0 + 1e-4 and min(norms) > 0.0
    assert torch.equal(dino.probe.weight.grad, probe_grad)


def test_global_clip_leaves_the_probe_out(tiny_data):
    simclr = _module(tiny_data)
    for p in simclr.parameters():
        p.grad = torch.ones_like(p)
    simclr.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    ssl = torch.cat([p.grad.flatten() for n, p in simclr.named_parameters()
                     if not n.startswith("probe.")])
    assert ssl.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert torch.equal(simclr.probe.weight.grad, torch.ones_like(simclr.probe.weight))


def test_dino_online_knn_scores_the_teacher(tiny_data):
    dino = _module(tiny_data, **DINO).eval()
    with torch.no_grad():
        for p in dino.teacher_backbone.parameters():
            p.mul_(0.5)
    images = torch.randn(4, 3, 16, 16)
    dino.validation_step((images, torch.tensor([0, 1, 2, 0])), 0, VAL)
    student, knn, _ = dino._eval_store[VAL][0]
    with torch.no_grad():
        teacher = dino.encode(images, dino.teacher_backbone).half()
        assert torch.allclose(knn.float(), teacher.float())
        assert not torch.allclose(knn.float(), student.float())


# --- recipes -------------------------------------------------------------------------------
def _blur_and_solarize_p(view) -> tuple[float, float]:
    blur = solarize = 0.0
    for step in view.augmented.transforms:
        if isinstance(step, v2.RandomApply) and isinstance(step.transforms[0], v2.GaussianBlur):
            blur = step.p
        if isinstance(step, v2.RandomSolarize):
            solarize = step.p
    return blur, solarize


@pytest.mark.parametrize("recipe, anchor, partner", [
    ("asymmetric", (1.0, 0.0), (0.0, 0.2)),  # the MixDiff authors: the partner is never blurred
    ("byol", (1.0, 0.0), (0.1, 0.2)),
    ("simclr", (0.5, 0.0), (0.5, 0.0)),
])
def test_recipes_blur_and_solarize_per_slot(tiny_data, recipe, anchor, partner):
    views = build_views(load_config(None, tiny_overrides(tiny_data, **{"augment.recipe": recipe})))
    assert [_blur_and_solarize_p(v) for v in views] == [anchor, partner]


def test_teacher_follows_the_student_within_each_optimiser_step(tiny_data, tmp_path,
                                                                monkeypatch):
    """The EMA runs inside optimizer_step, so a checkpoint saved at a batch boundary holds the
    teacher of that step (with momentum 0 at step 0: a copy of the student)."""
    from mixdiff.pretrain.callbacks import RunCheckpoint

    matched = []
    save = RunCheckpoint.on_train_batch_end

    def check_then_save(self, trainer, module, *args):
        matched.append(all(torch.equal(s, t) for s, t in zip(module.backbone.parameters(),
                                                             module.teacher_backbone.parameters())))
        return save(self, trainer, module, *args)

    monkeypatch.setattr(RunCheckpoint, "on_train_batch_end", check_then_save)
    pretrain(load_config(None, tiny_overrides(tiny_data, **DINO, **{
        "dino.momentum_teacher": 0.0, "optim.lr": 0.1})), tmp_path / "run")
    assert matched[0]  # step 0: momentum 0, so the teacher is the student just after the step


def test_barlow_twins_extra_mode_weights_the_pairs_with_a_twin(tiny_data):
    """[real, real, twin] with lambda 0.5: (L01 + 0.5 L02 + 0.5 L12) / 2, times scale_loss."""
    from mixdiff.pretrain.losses import barlow_twins_loss

    barlow = _module(tiny_data, method="barlow_twins", **{"data.mode": "extra",
                                                          "data.synthetic_weight": 0.5})
    assert barlow.twin_views == [2]
    torch.manual_seed(0)
    features = [torch.randn(6, barlow.feature_dim) for _ in range(3)]
    views = [torch.zeros(6, 3, 16, 16)] * 3
    sources = torch.tensor([[0, 0, 1]] * 6)
    got = barlow.ssl_loss(views, features, torch.arange(6), sources)
    z = [barlow.projector(f) for f in features]
    lambd = barlow.cfg.barlow_twins.lambd
    pair = [barlow_twins_loss(z[i], z[j], lambd=lambd) for i, j in ((0, 1), (0, 2), (1, 2))]
    expected = (pair[0] + 0.5 * pair[1] + 0.5 * pair[2]) / 2 * barlow.cfg.barlow_twins.scale_loss
    torch.testing.assert_close(got, expected)
