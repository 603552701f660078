"""The spectral-norm estimate of every kind of convolution, the cells and the regularisers."""

import math

import pytest
import torch

from nvae.cells import DecoderCell, EncoderCell
from nvae.layers import DROPOUT_LEVELS, Conv2d, Dropout, _DepthwiseConv2d, dropout_mask_cpu, norm2d
from nvae.regularizers import balanced_kl, norm_loss, spectral_norm_loss


def _dense_operator(conv: Conv2d) -> torch.Tensor:
    """The convolution without bias as a dense matrix: columns are its outputs on the input basis."""
    c, (h, w) = conv.in_channels, conv.input_size
    basis = torch.eye(c * h * w, dtype=torch.float64).view(-1, c, h, w)
    out = torch.nn.functional.conv2d(basis, conv.weight.double(), None, conv.stride, conv.padding,
                                     conv.dilation, conv.groups)
    return out.flatten(1).T


@pytest.mark.parametrize("kwargs", [
    {"in_channels": 3, "out_channels": 5, "kernel_size": 3, "input_size": 6},
    {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "input_size": 8, "stride": 2},
    {"in_channels": 6, "out_channels": 6, "kernel_size": 5, "input_size": 5, "groups": 6},
    {"in_channels": 4, "out_channels": 2, "kernel_size": 1, "input_size": (7, 8), "stride": 2},
    {"in_channels": 8, "out_channels": 3, "kernel_size": 1, "input_size": 4},
])
def test_spectral_norm_matches_svd_of_the_unfolded_operator(kwargs):
    torch.manual_seed(0)
    conv = Conv2d(**kwargs)
    sigma = conv.spectral_norm(iterations=200).item()
    exact = torch.linalg.svdvals(_dense_operator(conv))[0].item()
    assert sigma == pytest.approx(exact, rel=0.02)


def test_adjoint_is_the_transpose():
    torch.manual_seed(0)
    conv = Conv2d(3, 4, 3, 7, stride=2)
    u, v = torch.randn(1, 3, 7, 7), torch.randn(1, 4, 4, 4)
    lhs = (conv._apply_linear(u, conv.weight) * v).sum()
    rhs = (u * conv._apply_adjoint(v)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-5)


def test_power_iteration_state_survives_a_checkpoint():
    torch.manual_seed(0)
    conv = Conv2d(4, 4, 3, 6)
    conv.power_iteration(50)
    copy = Conv2d(4, 4, 3, 6)
    copy.load_state_dict(conv.state_dict())
    assert torch.equal(copy.sn_u, conv.sn_u) and torch.equal(copy.sn_v, conv.sn_v)
    assert copy.spectral_norm().item() == pytest.approx(conv.spectral_norm().item(), rel=1e-6)


def test_spectral_loss_has_gradient_on_weights_and_sums_every_conv():
    torch.manual_seed(0)
    cell = EncoderCell(8, 16, 4, downsample=True)
    loss = spectral_norm_loss(cell, iterations=0)
    convs = [m for m in cell.modules() if isinstance(m, Conv2d)]
    assert loss.item() == pytest.approx(sum(c.spectral_norm().item() for c in convs), rel=1e-5)
    loss.backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)


def test_norm_loss_is_sum_of_max_abs_scales():
    layers = torch.nn.Sequential(norm2d("batch", 4), norm2d("group", 8))
    with torch.no_grad():
        layers[0].weight.copy_(torch.tensor([0.5, -3.0, 1.0, 2.0]))
        layers[1].weight.fill_(1.5)
    assert norm_loss(layers).item() == pytest.approx(4.5)


def test_norm_choice():
    assert isinstance(norm2d("batch", 12), torch.nn.BatchNorm2d)
    gn = norm2d("group", 12)
    assert isinstance(gn, torch.nn.GroupNorm) and 12 % gn.num_groups == 0
    with pytest.raises(ValueError, match="'batch' or 'group'"):
        norm2d("layer", 4)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_cells_change_resolution_and_channels(norm):
    x = torch.randn(2, 8, 4, 4)
    assert EncoderCell(8, 8, 4, norm).forward(x).shape == (2, 8, 4, 4)
    assert EncoderCell(8, 16, 4, norm, downsample=True)(x).shape == (2, 16, 2, 2)
    assert DecoderCell(8, 8, 4, norm)(x).shape == (2, 8, 4, 4)
    assert DecoderCell(8, 4, 4, norm, upsample=True)(x).shape == (2, 4, 8, 8)


def test_balanced_kl():
    kl = torch.tensor([[1.0, 4.0, 0.0], [3.0, 8.0, 0.2]], requires_grad=True)
    alpha = torch.tensor([1.0, 4.0, 4.0])
    assert torch.allclose(balanced_kl(kl, alpha, 1.0), kl.sum(1))
    out = balanced_kl(kl, alpha, 0.5)
    gamma = (kl.abs().mean(0) + 0.01) / alpha
    gamma = gamma / gamma.mean()
    assert torch.allclose(out, 0.5 * (kl * gamma).sum(1))
    out.sum().backward()
    assert torch.allclose(kl.grad, 0.5 * gamma.detach().expand(2, 3))  # the weights carry no gradient


@pytest.mark.parametrize("size", [2, 4])
def test_depthwise_conv_gradients_match_torch(size):
    """The depthwise path (a faster weight gradient) has F.conv2d's output and gradients, checked in float64 against
    torch's own backward and by finite differences."""
    torch.manual_seed(0)
    conv = Conv2d(6, 6, 5, size, groups=6).double()
    assert conv.depthwise and not Conv2d(6, 6, 5, 8, groups=6).depthwise  # torch's own path is faster at 8×8
    x = torch.randn(3, 6, size, size, dtype=torch.float64, requires_grad=True)
    fast = conv(x)
    fast_grads = torch.autograd.grad(fast.pow(2).sum(), (x, conv.weight, conv.bias))
    conv.depthwise = False
    reference = conv(x)
    reference_grads = torch.autograd.grad(reference.pow(2).sum(), (x, conv.weight, conv.bias))
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
    for a, b in zip(fast_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    inputs = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in
              [(2, 2, size, size), (2, 1, 5, 5), (2,)]]
    assert torch.autograd.gradcheck(lambda x, w, b: _DepthwiseConv2d.apply(x, w, b, 2), inputs)


def test_cpu_dropout_drops_at_its_rate_and_keeps_the_mean():
    """4M elements: the dropped fraction is p within 5 binomial standard deviations (p is 0.1 to 2⁻¹⁷), every kept
    element is x / (1 − p̃) exactly, so E[y] = x; eval mode is the identity."""
    torch.manual_seed(0)
    p, count = 0.1, 4_000_000
    layer = Dropout(p).train()
    x = torch.full((count,), 3.0)
    y = layer(x)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / count)
    p_rounded = round(p * DROPOUT_LEVELS) / DROPOUT_LEVELS
    assert torch.all((y == 0) | (y == torch.tensor(3.0 / (1 - p_rounded))))
    assert abs(y.double().mean().item() - 3.0) < 5 * 3.0 * math.sqrt(p / (1 - p) / count)
    assert torch.equal(layer.eval()(x), x)


def test_cpu_dropout_masks_are_independent_and_keep_the_memory_format():
    """The four 16-bit uniforms of one 64-bit draw are independent: the correlation of neighbouring mask elements is 0
    within 5/√n and each of the four positions keeps at 1 − p; rates whose thresholds need the low bits (1/3, 0.9,
    2⁻¹⁰) come out right; a channels_last input gives a channels_last output, and the gradient is the mask times
    1/(1 − p̃)."""
    torch.manual_seed(1)
    mask = dropout_mask_cpu(torch.empty(1_000_000), 1 / 3).double()
    centred = mask - mask.mean()
    correlation = (centred[:-1] * centred[1:]).mean() / centred.var()
    assert abs(correlation.item()) < 5 / math.sqrt(len(mask))
    for shift in range(4):  # whole 64-bit words: element k of every word, in its own column
        column = mask.view(-1, 4)[:, shift]
        assert abs(column.mean().item() - 2 / 3) < 5 * math.sqrt(2 / 9 / len(column))
    for p in (1 / 3, 0.9, 2 ** -10):  # thresholds that need the low bits
        rate = 1 - dropout_mask_cpu(torch.empty(1_000_000), p).double().mean().item()
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / 1_000_000) + 2 ** -17
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    layer = Dropout(0.3).train()
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad, kept.float() / (1 - round(0.3 * DROPOUT_LEVELS) / DROPOUT_LEVELS))
    assert torch.allclose(y.detach()[kept], (x.detach() / (1 - round(0.3 * DROPOUT_LEVELS) / DROPOUT_LEVELS))[kept])
