"""Losses against independent references, and under a 2-process gloo group."""

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mixdiff.pretrain.losses import DINOLoss, barlow_twins_loss, info_nce_loss, nt_xent_loss


def test_nt_xent_matches_lightly():
    NTXentLoss = pytest.importorskip("lightly.loss").NTXentLoss

    torch.manual_seed(0)
    z_a, z_b = torch.randn(16, 8), torch.randn(16, 8)
    for t in (0.1, 0.5):
        expected = NTXentLoss(temperature=t, gather_distributed=False)(z_a, z_b)
        assert torch.allclose(nt_xent_loss(z_a, z_b, temperature=t), expected, atol=1e-5)


def _reference_info_nce(z, idx, t):
    """The formula, row by row, in float64."""
    z = F.normalize(z.double(), dim=1)
    sim = (z @ z.T / t).numpy()
    losses = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        pos = [j for j in others if idx[j] == idx[i]]
        losses.append(-np.log(np.exp(sim[i, pos]).sum() / np.exp(sim[i, others]).sum()))
    return float(np.mean(losses))


def test_info_nce_uses_indexes_for_positives():
    torch.manual_seed(1)
    z = torch.randn(12, 6)
    idx = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])  # three views of four samples
    assert abs(info_nce_loss(z, idx, 0.3).item() - _reference_info_nce(z, idx, 0.3)) < 1e-5
    # row order does not matter: positives come from the index, not from halves of the batch
    perm = torch.randperm(12)
    assert torch.allclose(info_nce_loss(z[perm], idx[perm], 0.3), info_nce_loss(z, idx, 0.3),
                          atol=1e-6)
    with pytest.raises(ValueError, match="no positive"):
        info_nce_loss(z[:3], torch.tensor([0, 1, 2]))


def _reference_weighted(z, idx, synthetic, temperature, lam):
    """Row by row in float64: -log(sum_p w_p exp(s_ip / T) / sum_{k != i} exp(s_ik / T)), with
    w_p = lam when row i or its positive p is a synthetic view, else 1."""
    zn = z.double() / z.double().norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(len(z)):
        others = [k for k in range(len(z)) if k != i]
        denominator = sum(math.exp(float(zn[i] @ zn[k]) / temperature) for k in others)
        numerator = sum((lam if synthetic[i] or synthetic[p] else 1.0)
                        * math.exp(float(zn[i] @ zn[p]) / temperature)
                        for p in others if idx[p] == idx[i])
        total += -math.log(numerator / denominator)
    return total / len(z)


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_a_twin_as_an_extra_positive_matches_a_hand_written_reference(lam):
    """Views [real, real, twin] of three samples (data.mode=extra): the multi-positive NT-Xent,
    and with lambda the pairs that include the twin weighted by it."""
    torch.manual_seed(2)
    z = torch.randn(9, 5)
    idx = torch.tensor([0, 1, 2] * 3)
    synthetic = torch.tensor([False] * 6 + [True] * 3)
    got = info_nce_loss(z, idx, 0.2, synthetic=synthetic, synthetic_weight=lam).item()
    assert got == pytest.approx(_reference_weighted(z, idx, synthetic, 0.2, lam), abs=1e-6)
    if lam == 1.0:  # lambda 1: the plain multi-positive loss
        assert got == pytest.approx(info_nce_loss(z, idx, 0.2).item(), abs=1e-6)
    else:
        assert got != pytest.approx(info_nce_loss(z, idx, 0.2).item(), abs=1e-3)
    with pytest.raises(ValueError, match="synthetic_weight"):
        info_nce_loss(z, idx, 0.2, synthetic=synthetic, synthetic_weight=0.0)


def _reference_barlow(z_a, z_b, lambd):
    """Zbontar et al. (2021), eq. 1-2, in float64 with BatchNorm's biased standardisation."""
    a, b = z_a.double().numpy(), z_b.double().numpy()
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    c = a.T @ b / len(a)
    d = c.shape[0]
    return sum((1 - c[i, i]) ** 2 for i in range(d)) + lambd * sum(
        c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)


def test_barlow_twins_matches_formula():
    torch.manual_seed(2)
    z_a, z_b = torch.randn(32, 10), torch.randn(32, 10)
    for lambd in (0.005, 0.1):
        got = barlow_twins_loss(z_a, z_b, lambd=lambd).item()
        assert abs(got - _reference_barlow(z_a, z_b, lambd)) < 1e-4
    # identical views: perfectly correlated, only the off-diagonal term remains
    assert barlow_twins_loss(z_a, z_a, lambd=0.0).item() < 1e-3


def test_dino_loss_matches_formula_and_centres():
    torch.manual_seed(3)
    k, b = 16, 4
    student = [torch.randn(b, k) for _ in range(4)]  # 2 global + 2 local crops
    teacher = [torch.randn(b, k) for _ in range(2)]
    loss_fn = DINOLoss(k, student_temperature=0.1, teacher_temperature=0.04)
    expected, pairs = 0.0, 0
    for ti, t in enumerate(teacher):
        p = F.softmax(t / 0.04, dim=-1)
        for si, s in enumerate(student):
            if si != ti:
                expected += (-p * F.log_softmax(s / 0.1, dim=-1)).sum(-1).mean()
                pairs += 1
    assert torch.allclose(loss_fn(student, teacher), expected / pairs, atol=1e-5)
    assert torch.allclose(loss_fn.center, 0.1 * torch.cat(teacher).mean(0, keepdim=True))
    warm = DINOLoss(k, teacher_temperature=0.07, warmup_teacher_temperature=0.04, warmup_epochs=10)
    assert warm.teacher_temperature_at(0) == pytest.approx(0.04)
    assert warm.teacher_temperature_at(5) == pytest.approx(0.055)
    assert warm.teacher_temperature_at(30) == pytest.approx(0.07)


# --- distributed: two CPU processes over gloo ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, inputs: dict, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {}
        n = inputs["z_a"].shape[0] // world
        part = slice(rank * n, (rank + 1) * n)
        for name, fn in (("nt_xent", lambda a, b: nt_xent_loss(a, b, temperature=0.3)),
                         ("barlow", lambda a, b: barlow_twins_loss(a, b, lambd=0.01))):
            z_a = inputs["z_a"][part].clone().requires_grad_()
            z_b = inputs["z_b"][part].clone().requires_grad_()
            loss = fn(z_a, z_b)
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            out[name] = (mean_loss.item() / world, z_a.grad / world, z_b.grad / world)
        third = inputs["twin"][part].clone().requires_grad_()  # [real, real, twin], lambda 0.5
        z_a = inputs["z_a"][part].clone().requires_grad_()
        z_b = inputs["z_b"][part].clone().requires_grad_()
        index = torch.arange(n) + rank * n
        loss = info_nce_loss(torch.cat([z_a, z_b, third]), torch.cat([index] * 3), 0.3,
                             synthetic=torch.tensor([False] * 2 * n + [True] * n),
                             synthetic_weight=0.5)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        out["extra"] = (mean_loss.item() / world, third.grad / world, z_a.grad / world)
        dino = DINOLoss(8)
        dino([inputs["z_a"][part, :8]] * 2, [inputs["z_b"][part, :8]] * 2)
        out["center"] = dino.center
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_losses_under_ddp_equal_one_process_on_the_whole_batch():
    torch.manual_seed(4)
    inputs = {"z_a": torch.randn(8, 12), "z_b": torch.randn(8, 12), "twin": torch.randn(8, 12)}
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), inputs, results), nprocs=2, join=True)
    for name, fn in (("nt_xent", lambda a, b: nt_xent_loss(a, b, temperature=0.3)),
                     ("barlow", lambda a, b: barlow_twins_loss(a, b, lambd=0.01))):
        z_a, z_b = inputs["z_a"].clone().requires_grad_(), inputs["z_b"].clone().requires_grad_()
        loss = fn(z_a, z_b)
        loss.backward()
        # DDP averages each rank's gradient: rank grads / world are what the optimiser sees
        assert results[0][name][0] == pytest.approx(loss.item(), abs=1e-5), name
        grad_a = torch.cat([results[r][name][1] for r in range(2)])
        grad_b = torch.cat([results[r][name][2] for r in range(2)])
        assert torch.allclose(grad_a, z_a.grad, atol=1e-6), name
        assert torch.allclose(grad_b, z_b.grad, atol=1e-6), name
    z_a, z_b = inputs["z_a"].clone().requires_grad_(), inputs["z_b"].clone()
    twin = inputs["twin"].clone().requires_grad_()
    index = torch.arange(8)
    loss = info_nce_loss(torch.cat([z_a, z_b, twin]), torch.cat([index] * 3), 0.3,
                         synthetic=torch.tensor([False] * 16 + [True] * 8), synthetic_weight=0.5)
    loss.backward()
    assert results[0]["extra"][0] == pytest.approx(loss.item(), abs=1e-5)
    assert torch.allclose(torch.cat([results[r]["extra"][1] for r in range(2)]), twin.grad,
                          atol=1e-6)
    assert torch.allclose(torch.cat([results[r]["extra"][2] for r in range(2)]), z_a.grad,
                          atol=1e-6)
    whole = DINOLoss(8)
    whole([inputs["z_a"][:, :8]] * 2, [inputs["z_b"][:, :8]] * 2)
    assert torch.allclose(results[0]["center"], whole.center, atol=1e-6)
    assert torch.allclose(results[1]["center"], whole.center, atol=1e-6)


def test_no_process_group_means_no_distributed_calls(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a distributed call without a process group")

    monkeypatch.setattr(dist, "all_reduce", boom)
    monkeypatch.setattr(dist, "all_gather", boom)
    z = torch.randn(4, 3)
    nt_xent_loss(z, z + 0.1)
    barlow_twins_loss(z, z + 0.1)
    DINOLoss(3)([z, z], [z])


def test_dino_loss_weights_each_student_crop():
    """student_weights: the mean over (teacher, student) pairs weighted by the student crop's
    weight (extra mode: lambda on a twin's crop); all ones is the plain mean."""
    torch.manual_seed(3)
    k = 12
    teacher = [torch.randn(4, k) for _ in range(2)]
    student = [torch.randn(4, k) for _ in range(4)]
    weights = [1.0, 1.0, 0.5, 1.0]

    def pair(t, s):
        target = torch.softmax(t / 0.04, dim=-1)
        return float((-target * torch.log_softmax(s / 0.1, dim=-1)).sum(-1).mean())

    terms = [(weights[si], pair(teacher[ti], student[si]))
             for ti in range(2) for si in range(4) if si != ti]
    expected = sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    got = DINOLoss(k)(student, teacher, student_weights=weights)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    plain = sum(v for _, v in terms) / len(terms)
    assert float(DINOLoss(k)(student, teacher)) == pytest.approx(plain, rel=1e-6)


def _loss_cases(device: str = "cpu"):
    """Each loss at a size where bf16 products show: NT-Xent at T=0.1, Barlow Twins' 256-wide
    cross-correlation, DINO's cross-entropy."""
    def dino(student, teacher):
        return DINOLoss(64).to(device)(list(student.chunk(3)), list(teacher.chunk(2)))

    rows = torch.arange(128, device=device)
    return {
        "nt_xent": (lambda a, b: nt_xent_loss(a, b, temperature=0.1), (64, 128), (64, 128)),
        "info_nce": (lambda a, b: info_nce_loss(torch.cat([a, b]), rows % 64, 0.1,
                                                synthetic=rows >= 96, synthetic_weight=0.5),
                     (64, 128), (64, 128)),
        "barlow_twins": (lambda a, b: barlow_twins_loss(a, b), (128, 256), (128, 256)),
        "dino": (dino, (24, 64), (16, 64)),
    }


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
@pytest.mark.parametrize("name", list(_loss_cases()))
def test_every_loss_computes_in_fp32_under_bf16_autocast(name, device):
    """Autocast picks a matmul's dtype whatever its inputs': under bf16-mixed the losses must still
    give the fp32 loss and gradients (to 1e-5 relative), on the CPU and on a GPU."""
    loss_fn, shape_a, shape_b = _loss_cases(device)[name]
    torch.manual_seed(0)
    a0, b0 = torch.randn(shape_a, device=device), torch.randn(shape_b, device=device)

    def run(autocast: bool):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(a, b)
        loss.backward()
        return loss.detach(), a.grad, b.grad

    (loss32, ga32, gb32), (loss16, ga16, gb16) = run(False), run(True)
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=1e-5, atol=0)
    for got, want in ((ga16, ga32), (gb16, gb32)):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
