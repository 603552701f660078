"""Building blocks of the NVAE cells: a convolution that tracks its spectral norm, normalisation,
squeeze-and-excitation, dropout, and the down/up-sampling skip connections."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair


def _normalize(t: torch.Tensor) -> torch.Tensor:
    """t / ||t||_2 over the whole tensor."""
    return t / t.norm().clamp_min(1e-12)


class _DepthwiseConv2d(torch.autograd.Function):
    """y[b, c] = Σ_{i,j} w[c, 0, i, j] · x_pad[b, c, · + i, · + j] (+ bias[c]), stride 1, with the weight gradient as
    k² shifted products, ∂L/∂w[c, 0, i, j] = Σ_{b,h,w} g[b, c, h, w] · x_pad[b, c, h + i, w + j]: the same numbers
    as ``F.conv2d``'s backward, which on CPU is 3–8× slower for this gradient on NVAE's 2×2 and 4×4 maps with 5×5
    kernels (``benchmarks/depthwise_backward.py``). The input gradient stays ``conv_transpose2d``'s."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        padding, (height, width), size = ctx.padding, x.shape[-2:], weight.shape[-1]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(grad, weight, None, 1, padding, 0, x.shape[1])
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (padding,) * 4)
            taps = [(grad * padded[:, :, i:i + height, j:j + width]).sum((0, 2, 3))
                    for i in range(size) for j in range(size)]
            grad_weight = torch.stack(taps, 1).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that estimates its operator norm on inputs of spatial size ``input_size``.

    The linear part of the convolution is a matrix W acting on R^(C_in * H * W); its largest singular
    value sigma(W) is found by power iteration, v <- W u / ||W u||, u <- W^T v / ||W^T v||, where W u is the
    convolution (no bias) and W^T v its adjoint, the transposed convolution. u and v are buffers, so
    the iteration continues across steps and survives checkpoints. ``spectral_norm()`` returns
    sigma = <v, W u>, differentiable with respect to the weight (Miyato et al. 2018; NVAE's regulariser).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 input_size: int | tuple[int, int], stride: int = 1, groups: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                         groups=groups, bias=bias)
        self.input_size = _pair(input_size)
        pad = self.padding[0]
        out_size = tuple((n + 2 * pad - kernel_size) // stride + 1 for n in self.input_size)
        self.output_padding = tuple(n - ((m - 1) * stride - 2 * pad + kernel_size)
                                    for n, m in zip(self.input_size, out_size))
        # depthwise on maps of at most 4×4 (NVAE's lower decoder cells): there torch's CPU weight gradient is 3–8×
        # slower than `_DepthwiseConv2d`'s; at 8×8 it is 2× faster (benchmarks/depthwise_backward.py)
        self.depthwise = (groups == in_channels == out_channels and stride == 1 and groups > 1
                          and max(self.input_size) <= 4)
        self.register_buffer("sn_u", _normalize(torch.randn(1, in_channels, *self.input_size)))
        self.register_buffer("sn_v", _normalize(torch.randn(1, out_channels, *out_size)))
        self.power_iteration(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution; a depthwise one through `_DepthwiseConv2d` (same numbers, a faster weight gradient)."""
        if self.depthwise:
            return _DepthwiseConv2d.apply(x, self.weight, self.bias, self.padding[0])
        return super().forward(x)

    def _apply_linear(self, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """W u: the convolution without its bias."""
        return F.conv2d(u, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def _apply_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        """W^T v: the transposed convolution, landing back on the input size."""
        return F.conv_transpose2d(v, self.weight, None, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)

    @torch.no_grad()
    def power_iteration(self, iterations: int = 1) -> None:
        """Advance the persistent singular-vector estimates u, v by ``iterations`` steps."""
        u = self.sn_u
        for _ in range(iterations):
            v = _normalize(self._apply_linear(u, self.weight))
            u = _normalize(self._apply_adjoint(v))
        if iterations > 0:
            self.sn_u.copy_(u)
            self.sn_v.copy_(v)

    def spectral_norm(self, iterations: int = 0) -> torch.Tensor:
        """sigma(W) ~= <v, W u> after ``iterations`` further power steps; gradient flows to the weight."""
        self.power_iteration(iterations)
        return (self.sn_v.clone() * self._apply_linear(self.sn_u.clone(), self.weight)).sum()


DROPOUT_LEVELS = 2 ** 16  # the CPU mask's resolution: p is rounded to a multiple of 2⁻¹⁶


def dropout_mask_cpu(like: torch.Tensor, p: float) -> torch.Tensor:
    """A mask m ~ Bernoulli(1 − p̃) shaped and laid out like `like` (so that x ⊙ m keeps x's memory format),
    p̃ = round(p·2¹⁶)/2¹⁶, from 16-bit uniform integers: one 64-bit draw of the generator gives four of them, where
    ``bernoulli_`` and ``rand`` draw once per element — on CPU the draws, not the arithmetic, are dropout's cost."""
    count = like.numel()
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=like.device)
    uniform16 = words.view(torch.int16)[:count]  # each uniform on −2¹⁵ .. 2¹⁵ − 1
    dense = like.is_contiguous() or like.is_contiguous(memory_format=torch.channels_last)
    uniform16 = uniform16.as_strided(like.shape, like.stride()) if dense else uniform16.view(like.shape)
    return uniform16 >= round(p * DROPOUT_LEVELS) - DROPOUT_LEVELS // 2


class Dropout(nn.Dropout):
    """Element-wise dropout y = x ⊙ m / (1 − p̃) in training, the identity in eval; on CPU the mask comes from
    `dropout_mask_cpu` (p̃ within 2⁻¹⁷ of p), elsewhere this is ``nn.Dropout`` (a fused kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        dropped = round(self.p * DROPOUT_LEVELS)
        if dropped >= DROPOUT_LEVELS:
            return torch.zeros_like(x)
        return torch.where(dropout_mask_cpu(x, self.p), x * (DROPOUT_LEVELS / (DROPOUT_LEVELS - dropped)), 0.0)


def group_count(channels: int, max_groups: int = 8) -> int:
    """Number of GroupNorm groups: gcd(channels, max_groups), so groups always divide the channels."""
    return math.gcd(channels, max_groups)


def norm2d(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d (NVAE's momentum 0.05) or GroupNorm (independent of batch size: small batches, CPU)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, momentum=0.05)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"unknown norm {kind!r}; choose 'batch' or 'group'")


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 relu(W1 mean_hw(x))): channel gating (Hu et al. 2018), hidden = max(C/16, 4)."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // 16, 4)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class FactorizedReduce(nn.Module):
    """Halve the resolution without discarding pixels: Swish, then four stride-2 1x1 convs on the
    input shifted by (0,0), (1,1), (0,1), (1,0), concatenated along channels (NVAE's skip for down cells)."""

    SHIFTS = ((0, 0), (1, 1), (0, 1), (1, 0))

    def __init__(self, in_channels: int, out_channels: int, input_size: int):
        super().__init__()
        if out_channels < 4:
            raise ValueError(f"FactorizedReduce needs at least 4 output channels, got {out_channels}")
        split = [out_channels // 4] * 3 + [out_channels - 3 * (out_channels // 4)]
        self.convs = nn.ModuleList(
            Conv2d(in_channels, c, 1, (input_size - dy, input_size - dx), stride=2)
            for c, (dy, dx) in zip(split, self.SHIFTS)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(x)
        return torch.cat([conv(x[:, :, dy:, dx:]) for conv, (dy, dx) in zip(self.convs, self.SHIFTS)], dim=1)


class UpSample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 1x1 conv (the skip of up cells)."""

    def __init__(self, in_channels: int, out_channels: int, input_size: int):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, 1, 2 * input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
