"""Convolutions with a one-pixel output computed from the taps that touch the image: the same
outputs and gradients as nn.Conv2d, the same state dict, only where the rule holds."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from mixdiff.models.one_window import OneWindowConv2d, one_window_convs, overlapping_taps


@pytest.mark.parametrize("shape, conv", [
    ((4, 16, 1, 1), dict(kernel_size=3, padding=1)),  # a ResNet's last stage at 32 px
    ((4, 16, 2, 2), dict(kernel_size=3, stride=2, padding=1)),  # its first conv there
    ((4, 16, 2, 2), dict(kernel_size=1, stride=2)),  # its shortcut: input outside the window
    ((4, 16, 2, 2), dict(kernel_size=3, padding=1)),  # 2x2 output: plain
    ((4, 16, 1, 3), dict(kernel_size=3, padding=1)),
    ((4, 16, 1, 1), dict(kernel_size=3, padding=1, groups=4, bias=False)),
])
def test_outputs_and_gradients_equal_the_plain_convolution(shape, conv):
    torch.manual_seed(0)
    plain = nn.Conv2d(16, 8, **conv)
    fast = one_window_convs(copy.deepcopy(plain))
    assert type(fast) is OneWindowConv2d
    x = torch.randn(shape, requires_grad=True)
    y_plain, y_fast = plain(x), fast(x)
    assert y_fast.shape == y_plain.shape
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-5, atol=1e-6)
    grads = [torch.autograd.grad(y.square().sum(), (x, m.weight)) for y, m in
             ((y_plain, plain), (y_fast, fast))]
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_the_rule_picks_only_single_windows_that_hold_the_input():
    assert overlapping_taps((1, 1), (3, 3), (1, 1), (1, 1)) == (slice(1, 2), slice(1, 2))
    assert overlapping_taps((2, 2), (3, 3), (2, 2), (1, 1)) == (slice(1, 3), slice(1, 3))
    assert overlapping_taps((2, 2), (3, 3), (1, 1), (1, 1)) is None  # four windows
    assert overlapping_taps((2, 2), (1, 1), (2, 2), (0, 0)) is None  # a pixel outside it


def test_a_resnet_keeps_its_state_dict_and_its_numbers_at_32_px():
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10)
    fast = one_window_convs(copy.deepcopy(plain))
    assert sum(type(m) is OneWindowConv2d for m in fast.modules()) == 20
    torchvision.models.resnet18(num_classes=10).load_state_dict(fast.state_dict())  # strict
    x = torch.randn(6, 3, 32, 32)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
    fast(x).sum().backward()
    plain(x).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):  # float noise only
        assert (b.grad - a.grad).norm() <= 1e-5 * a.grad.norm(), name
