"""StyleGAN2's building blocks: equalised-learning-rate layers, FIR resampling and the modulated convolution.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020 (https://arxiv.org/abs/1912.04958);
equalised learning rate from Karras et al., "Progressive Growing of GANs", ICLR 2018 (https://arxiv.org/abs/1710.10196).

Equalised learning rate (ProGAN Sec. 4.1): a parameter is stored as theta ~ N(0, 1) (N(0, 1/lr_mul^2) with a
learning-rate multiplier) and used as w = c * theta with c = lr_mul / sqrt(fan_in), multiplied in at run time in
every forward, not folded into the initialisation. Adam's update is scale-free, so every layer then learns at the
same speed relative to its weights' scale; lr_mul < 1 slows a layer down (the mapping network's 0.01).

Modulation / demodulation (StyleGAN2 Eq. 1-3), s = A(w) the style of one sample:
    w'_{ijk}  = s_i * w_{ijk}                                        (Eq. 1, modulation)
    sigma_j   = sqrt(sum_{i,k} w'_{ijk}^2)                           (Eq. 2)
    w''_{ijk} = w'_{ijk} / sqrt(sum_{i,k} w'_{ijk}^2 + eps)          (Eq. 3, demodulation)
with i the input channel, j the output channel, k the kernel tap. Each sample has its own weights, so the batch is
run as ONE grouped convolution: (1, B*C_in, H, W) with groups = B and weights (B*C_out, C_in, k, k).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2)  # He et al.'s gain for (leaky) ReLU: keeps activations at unit variance


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) times sqrt(2), StyleGAN's activation."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


class EqualLinear(nn.Module):
    """Fully connected layer with an equalised learning rate: y = (c * theta) x + lr_mul * b, c = lr_mul / sqrt(in)."""

    def __init__(self, c_in: int, c_out: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)  # theta, N(0, 1/lr_mul^2)
        self.bias = nn.Parameter(torch.full((c_out,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(c_in)  # c, applied at run time
        self.bias_gain = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu(y) if self.activation else y


# ---------------------------------------------------------------- FIR resampling ([1, 3, 3, 1], StyleGAN2 App. B)

def fir_kernel(taps: tuple[int, ...] = (1, 3, 3, 1)) -> torch.Tensor:
    """The separable low-pass filter f f^T, normalised to sum 1: (k, k)."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: int, gain: float = 1.0) -> torch.Tensor:
    """Depthwise FIR filter (B, C, H, W) -> (B, C, H + 2 pad - k + 1, ...); the kernel is symmetric."""
    c = x.shape[1]
    weight = (kernel * gain).to(x.dtype).expand(c, 1, *kernel.shape)  # (C, 1, k, k), one filter per channel
    return F.conv2d(x, weight, padding=pad, groups=c)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x upsampling: zero insertion then the FIR filter (gain 4 keeps the mean): (B, C, H, W) -> (B, C, 2H, 2W).
    As a depthwise transposed convolution, stride 2, padding 1 (= upfirdn2d(up=2, pad=(2, 1)))."""
    c = x.shape[1]
    weight = (kernel * 4).to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)


class EqualConv2d(nn.Module):
    """Convolution with an equalised learning rate; down=True blurs then takes stride 2 (StyleGAN2's D)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, bias: bool = True, activation: bool = False,
                 down: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel_size, kernel_size))  # theta ~ N(0, 1)
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.weight_gain = 1 / math.sqrt(c_in * kernel_size ** 2)  # c = 1 / sqrt(fan_in)
        self.activation, self.down, self.kernel_size = activation, down, kernel_size
        self.register_buffer("fir", fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        if self.down:  # blur (pad so that the stride-2 conv lands on H/2), then subsample by the conv's stride
            x = blur(x, self.fir, pad=(self.kernel_size + 1) // 2)
            y = F.conv2d(x, w, self.bias, stride=2)
        else:
            y = F.conv2d(x, w, self.bias, padding=self.kernel_size // 2)
        return lrelu(y) if self.activation else y


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are modulated by a per-sample style s = A(w) and (optionally) demodulated, Eq. 1-3.

    forward(x (B, C_in, H, W), w (B, w_dim)) -> (B, C_out, H', W'), H' = 2H with up=True (transposed conv,
    stride 2, then the FIR blur, as StyleGAN2's generator upsamples)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, w_dim: int, demodulate: bool = True,
                 up: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel_size, kernel_size))  # theta ~ N(0, 1)
        self.weight_gain = 1 / math.sqrt(c_in * kernel_size ** 2)
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)  # A: styles start at 1 (Sec. 2.2)
        self.demodulate, self.up, self.kernel_size = demodulate, up, kernel_size
        self.register_buffer("fir", fir_kernel(), persistent=False)

    def modulated_weight(self, styles: torch.Tensor) -> torch.Tensor:
        """Per-sample weights (B, C_out, C_in, k, k) for styles s (B, C_in): Eq. 1, then Eq. 3 if demodulating.
        Computed in fp32 (the sum of squares of Eq. 3 is the delicate part), whatever the autocast."""
        weight = (self.weight * self.weight_gain).float()[None] * styles.float()[:, None, :, None, None]  # Eq. 1
        if self.demodulate:
            weight = weight * (weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()  # Eq. 3
        return weight

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, c_in, h, wd = x.shape
        weight = self.modulated_weight(self.affine(w))  # (B, C_out, C_in, k, k)
        c_out, k = weight.shape[1], self.kernel_size
        x = x.reshape(1, b * c_in, h, wd)  # the batch as groups of one grouped convolution
        if self.up:  # transposed conv wants (B*C_in, C_out, k, k)
            weight = weight.transpose(1, 2).reshape(b * c_in, c_out, k, k)
            y = F.conv_transpose2d(x, weight.to(x.dtype), stride=2, groups=b)  # (1, B*C_out, 2H+1, 2W+1)
            y = blur(y, self.fir, pad=1, gain=4)  # -> (1, B*C_out, 2H, 2W)
        else:
            y = F.conv2d(x, weight.reshape(b * c_out, c_in, k, k).to(x.dtype), padding=k // 2, groups=b)
        return y.reshape(b, c_out, *y.shape[2:])  # (B, C_out, H', W')
