"""The invertible layers of RealNVP and Glow (model.py's docstring has the papers and the equations).

Every layer maps x -> (y, log|det dy/dx|) with forward(x) and y -> x with inverse(y); log-determinants are per
image, shape (B,), in float32. Shapes are (B, C, H, W).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """Space-to-channel (RealNVP Sec. 3.6): each 2x2 patch becomes 4 channels; (B, C, H, W) -> (B, 4C, H/2, W/2)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)  # (B, C, H/2, 2, W/2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """Inverse of squeeze: (B, 4C, H, W) -> (B, C, 2H, 2W). A permutation: log-det 0."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w)  # (B, C, 2, 2, H, W)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


def checkerboard(h: int, w: int, parity: int, like: torch.Tensor) -> torch.Tensor:
    """RealNVP's spatial checkerboard mask b (Fig. 3, left): 1 where (i + j) % 2 == parity; (1, 1, H, W)."""
    i = torch.arange(h, device=like.device)[:, None]
    j = torch.arange(w, device=like.device)[None, :]
    return ((i + j) % 2 == parity).to(like.dtype)[None, None]


class ActNorm(nn.Module):
    """Act-norm (Glow Sec. 3.1): y = (x + bias) * exp(log_scale) per channel, log-det = H W sum log_scale.

    Data-dependent init: the first forward (or initialize(x)) sets bias = -mean, exp(log_scale) = 1 / std of each
    channel over (B, H, W), so the post-act-norm activations of that batch have zero mean and unit variance.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))  # saved: a resumed run is not re-initialised

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        x = x.float()
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.initialized:
            self.initialize(x)
        logdet = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return (x + self.bias) * torch.exp(self.log_scale), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution in LU form (Glow Sec. 3.2, Eq. 10): W = P L (U + diag(s)).

    P is a fixed permutation, L lower triangular with ones on the diagonal, U strictly upper triangular and
    s = sign * exp(log_s), so W stays invertible for any parameter values and log|det W| = sum log_s:
    the layer's log-det is H W sum log_s (Eq. 9 without the O(C^3) determinant). Initialised from a random
    rotation, as in the paper.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # a random rotation
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> torch.Tensor:
        """W = P L (U + diag(sign exp(log_s))), (C, C)."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        with torch.autocast(x.device.type, enabled=False):  # the invertible path stays in float32
            w = self.weight()
            y = F.conv2d(x.to(w.dtype), w.view(c, c, 1, 1))
        return y, (self.log_s.sum() * x.shape[2] * x.shape[3]).expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        c = y.shape[1]
        w = self.weight()
        w_inv = torch.linalg.inv(w.double()).to(w.dtype)
        return F.conv2d(y.to(w.dtype), w_inv.view(c, c, 1, 1))


class ZeroConv2d(nn.Conv2d):
    """3x3 convolution initialised to zero (Glow Sec. 3.3): each coupling starts as the identity."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, kernel_size=3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def coupling_net(c_in: int, c_out: int, width: int) -> nn.Sequential:
    """NN() of the coupling layers (Glow Sec. 5): 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv."""
    return nn.Sequential(nn.Conv2d(c_in, width, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(width, width, kernel_size=1), nn.ReLU(inplace=True), ZeroConv2d(width, c_out))


class Coupling(nn.Module):
    """Affine coupling (RealNVP Eq. 7-9, Glow Table 1), or additive (NICE; Glow's option).

    The input is split by a mask into a part x_a that passes through and a part x_b that is transformed:
        y_b = x_b * exp(log_s(x_a)) + t(x_a),   log-det = sum over x_b of log_s     (affine)
        y_b = x_b + t(x_a),                      log-det = 0                         (additive)
    mask "channel": x_a, x_b are the two channel halves (`parity` 1 swaps them); mask "checkerboard": x_a is
    x * b for RealNVP's checkerboard b of `parity` and x_b the rest (y = b x + (1 - b)(x exp(log_s) + t), Eq. 9).
    log_s = log sigmoid(raw + 2) ("sigmoid", Glow's code) or scale * tanh(raw) ("tanh", RealNVP's code).
    """

    def __init__(self, channels: int, width: int, mask: str = "channel", parity: int = 0, additive: bool = False,
                 scale_fn: str = "sigmoid") -> None:
        super().__init__()
        self.mask, self.parity, self.additive, self.scale_fn = mask, parity, additive, scale_fn
        c_in = channels // 2 if mask == "channel" else channels
        c_b = channels - channels // 2 if mask == "channel" else channels  # channels of t and log_s
        self.net = coupling_net(c_in, c_b * (1 if additive else 2), width)
        if scale_fn == "tanh" and not additive:
            self.tanh_scale = nn.Parameter(torch.ones(1, c_b, 1, 1))

    def _log_scale_shift(self, x_a: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        # an NHWC input makes the convolutions NHWC: 2x faster training on CPU here, fp32 and bf16 (README, Speed)
        h = self.net(x_a.contiguous(memory_format=torch.channels_last))
        h = h.to(x_a.dtype)  # numerically delicate from here on: float32 even under bf16 autocast
        if self.additive:
            return None, h
        raw, shift = h[:, 0::2], h[:, 1::2]  # interleaved ("cross"), as in Glow's code
        if self.scale_fn == "tanh":
            return self.tanh_scale * torch.tanh(raw), shift
        return F.logsigmoid(raw + 2.0), shift

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = x.shape[1] // 2
        a, b = x[:, :half], x[:, half:]
        return (b, a) if self.parity else (a, b)

    def _join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b, a] if self.parity else [a, b], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask == "channel":
            x_a, x_b = self._split(x)
            log_s, t = self._log_scale_shift(x_a)
            y_b = x_b + t if log_s is None else x_b * torch.exp(log_s) + t
            logdet = x.new_zeros(x.shape[0]) if log_s is None else log_s.flatten(1).sum(1)
            return self._join(x_a, y_b), logdet
        b = checkerboard(x.shape[2], x.shape[3], self.parity, x)  # (1, 1, H, W)
        log_s, t = self._log_scale_shift(x * b)
        t = t * (1 - b)
        if log_s is None:
            return x + t, x.new_zeros(x.shape[0])
        log_s = log_s * (1 - b)  # 0 where x passes through: exp(0) = 1
        return x * torch.exp(log_s) + t, log_s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.mask == "channel":
            y_a, y_b = self._split(y)
            log_s, t = self._log_scale_shift(y_a)
            x_b = y_b - t if log_s is None else (y_b - t) * torch.exp(-log_s)
            return self._join(y_a, x_b)
        b = checkerboard(y.shape[2], y.shape[3], self.parity, y)
        log_s, t = self._log_scale_shift(y * b)  # y * b == x * b: the pass-through part is unchanged
        t = t * (1 - b)
        return y - t if log_s is None else (y - t) * torch.exp(-log_s * (1 - b))


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor | None = None,
                      log_std: torch.Tensor | None = None) -> torch.Tensor:
    """log N(z; mean, exp(log_std)^2) summed over (C, H, W) -> (B,); standard normal when mean is None."""
    if mean is None:
        return -0.5 * (z ** 2 + math.log(2 * math.pi)).flatten(1).sum(1)
    return (-0.5 * ((z - mean) * torch.exp(-log_std)) ** 2 - log_std
            - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


class SplitPrior(nn.Module):
    """Factor-out (RealNVP Sec. 3.6): half the channels leave the flow as z; the other half, h, goes on.

    learned=True (Glow): p(z | h) = N(mean(h), exp(log_std(h))^2) from a zero-initialised conv of h (so it starts as
    N(0, I)); learned=False (RealNVP): z ~ N(0, I).
    """

    def __init__(self, channels: int, learned: bool) -> None:
        super().__init__()
        self.net = ZeroConv2d(channels // 2, 2 * (channels - channels // 2)) if learned else None

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.net is None:
            return None, None
        out = self.net(h.contiguous(memory_format=torch.channels_last)).to(h.dtype)
        return out[:, 0::2], out[:, 1::2]  # mean, log_std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (h, z, log p(z | h) (B,))."""
        half = x.shape[1] // 2
        h, z = x[:, :half], x[:, half:]
        return h, z, gaussian_log_prob(z, *self.params(h))

    def inverse(self, h: torch.Tensor, z: torch.Tensor | None = None, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """(h, z) -> x; z None draws z ~ N(mean(h), (T std(h))^2) (Glow's temperature T, Sec. 6)."""
        if z is None:
            mean, log_std = self.params(h)
            c = h.shape[1] if mean is None else mean.shape[1]
            eps = torch.randn(h.shape[0], c, *h.shape[2:], generator=generator).to(h.device)
            z = temperature * eps if mean is None else mean + temperature * torch.exp(log_std) * eps
        return torch.cat([h, z.to(h.dtype)], dim=1)
