"""Normalizing flows: RealNVP and Glow, one multi-scale flow chosen by Config.flow.

Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017. https://arxiv.org/abs/1605.08803
Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
https://arxiv.org/abs/1807.03039  (the layers are in layers.py)

Change of variables (RealNVP Eq. 3): with z = f(x) a bijection built from layers f = f_L o ... o f_1,
    log p_X(x) = log p_Z(f(x)) + sum_l log |det df_l / dh_{l-1}|                                       (log_prob)
Affine coupling (RealNVP Eq. 4-6; masked form Eq. 9; Glow Table 1):
    y_a = x_a,  y_b = x_b * exp(s(x_a)) + t(x_a),   log-det = sum s(x_a)            (layers.Coupling)
  x_a / x_b by a spatial checkerboard mask or by channel halves (RealNVP Fig. 3); additive (NICE) when s = 0.
Act-norm (Glow Table 1): y = (x + b) * exp(log s) per channel, log-det = h w sum log s; b and s are
  initialised from the first batch so that it comes out with zero mean and unit variance.        (layers.ActNorm)
Invertible 1x1 convolution (Glow Eq. 9-11): y = W x at every pixel, log-det = h w log|det W|, with
  W = P L (U + diag(s)) (Eq. 10) so that log|det W| = sum log|s| (Eq. 11).                       (layers.InvConv1x1)
Multi-scale architecture (RealNVP Sec. 3.6): squeeze 2x2 patches into channels, and after each level but the
  last factor out half the channels as z_i (RealNVP: z_i ~ N(0, I); Glow: N(mean(h), std(h)^2) from the half h
  that goes on, a learned prior).                                                    (layers.squeeze, SplitPrior)
  RealNVP level: K checkerboard couplings, squeeze, K channel couplings, factor out; the last level has K + 1
    checkerboard couplings (the paper: K = 3, four at the last scale). Act-norm follows every coupling.
  Glow level: squeeze, K steps of [act-norm, 1x1 conv, coupling on channel halves], factor out (Glow Fig. 2).
Temperature (Glow Sec. 6): samples from p_T(x) ~ p(x)^(1/T^2), i.e. every z_i drawn with its std times T.

Likelihood convention (shared/metrics.py, the project's one convention; also README): 8-bit images k in
{0..255}^D are uniformly dequantised into x = (k + u) / 256, u ~ U[0, 1)^D (Glow Eq. 2 with a = 1/256), and the
flow is a density on x in [0, 1)^D. Its first layer maps x to the flow's input: Glow x - 1/2 (log-det 0);
RealNVP the logit transform y = logit(alpha + (1 - 2 alpha) x) (RealNVP Sec. 4.1), whose log-det is part of
-log p(x). Then
    bits/dim = (-log p(x) - D log(1/256)) / (D ln 2)  = shared.metrics.dequantized_bits_per_dim(nll, D, 1 / 256),
an upper bound on the 8-bit NLL (Theis et al. 2016). Losses are means over the batch of bits/dim.
Conventions: images for sample / encode / reconstruct are in [-1, 1], (B, C, H, W); x01 = (image + 1) / 2.

Deviations:
  * RealNVP uses act-norm where the paper has batch normalisation (the issue allows either; act-norm keeps the
    log-det exact per image, with no batch statistics at test time) and Glow's 3-layer coupling network
    (3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv) where the paper has residual networks.
  * Glow's coupling uses log s = log sigmoid(raw + 2) (the authors' code; the paper writes s = exp(log s));
    RealNVP's uses s = scale * tanh(raw) (the authors' code). No act-norm inside the coupling networks, and the
    zero-initialised convolutions have no extra learned log-scale (Glow's code has both).
  * The top prior is N(0, I) (Glow's code can learn it); no class conditioning.
  * The logit transform is in its symmetric form alpha + (1 - 2 alpha) x with alpha = 0.05.
  * train.py's default sizes are for 10 minutes on one CPU thread (README); the papers' are flags away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from layers import ActNorm, Coupling, InvConv1x1, SplitPrior, gaussian_log_prob, squeeze, unsqueeze

FLOWS = ("glow", "realnvp")
PAPER_DEFAULTS = {  # per flow: scale_fn, learned_prior, preprocess (the papers' / authors' code choices)
    "glow": {"scale_fn": "sigmoid", "learned_prior": "yes", "preprocess": "center"},
    "realnvp": {"scale_fn": "tanh", "learned_prior": "no", "preprocess": "logit"},
}


@dataclass
class Config:
    flow: str = "glow"  # glow | realnvp
    image_size: int = 32  # H = W, divisible by 2^levels
    channels: int = 1  # image channels
    levels: int = 3  # scales L (a squeeze each; a factor-out after each but the last)
    depth: int = 8  # K: flow steps (Glow) or couplings per mask type (RealNVP) per level
    width: int = 128  # hidden channels of the coupling networks
    coupling: str = "affine"  # affine | additive
    scale_fn: str = ""  # sigmoid | tanh ("" = the flow's: Glow sigmoid, RealNVP tanh)
    learned_prior: str = ""  # yes | no: factored-out z_i ~ N(mean(h), std(h)^2) ("" = Glow yes, RealNVP no)
    preprocess: str = ""  # center (x - 1/2) | logit ("" = Glow center, RealNVP logit)
    logit_alpha: float = 0.05  # alpha of the logit transform

    def __post_init__(self) -> None:
        if self.flow not in FLOWS:
            raise ValueError(f"--flow must be one of {', '.join(FLOWS)}, got {self.flow!r}")
        for key, value in PAPER_DEFAULTS[self.flow].items():
            if not getattr(self, key):
                setattr(self, key, value)
        choices = {"coupling": ("affine", "additive"), "scale_fn": ("sigmoid", "tanh"),
                   "learned_prior": ("yes", "no"), "preprocess": ("center", "logit")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, key)!r}")
        if self.levels < 1 or self.depth < 0 or self.width < 1:
            raise ValueError("--levels and --width must be >= 1, --depth >= 0")
        if self.image_size % 2 ** self.levels:
            raise ValueError(f"--image-size {self.image_size} must be divisible by 2^levels = {2 ** self.levels}")
        if not 0 < self.logit_alpha < 0.5:
            raise ValueError(f"--logit-alpha must be in (0, 0.5), got {self.logit_alpha}")

    @property
    def num_dims(self) -> int:
        return self.channels * self.image_size ** 2


# ---------------------------------------------------------------- building blocks (the rest are in layers.py)

class Preprocess(nn.Module):
    """x in [0, 1) -> the flow's input: x - 1/2 ("center"), or logit(alpha + (1 - 2 alpha) x) ("logit")."""

    def __init__(self, kind: str, alpha: float) -> None:
        super().__init__()
        self.kind, self.alpha = kind, alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "center":
            return x - 0.5, x.new_zeros(x.shape[0])
        p = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        # dy/dx = (1 - 2 alpha) / (p (1 - p))
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "center":
            return y + 0.5
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


class Level(nn.Module):
    """One scale: invertible layers before the squeeze, the squeeze, layers after it, then the factor-out."""

    def __init__(self, pre: list[nn.Module], post: list[nn.Module], split: SplitPrior | None,
                 squeeze_first: bool) -> None:
        super().__init__()
        self.pre, self.post, self.split, self.squeeze_first = nn.ModuleList(pre), nn.ModuleList(post), split, \
            squeeze_first

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """x -> (h going on, z factored out or None, log-det (B,), log p(z | h) (B,))."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.pre:
            x, ld = layer(x)
            logdet = logdet + ld
        if self.squeeze_first or self.split is not None:
            x = squeeze(x)  # (B, C, H, W) -> (B, 4C, H/2, W/2)
        for layer in self.post:
            x, ld = layer(x)
            logdet = logdet + ld
        if self.split is None:
            return x, None, logdet, x.new_zeros(x.shape[0])
        h, z, log_pz = self.split(x)
        return h, z, logdet, log_pz

    def inverse(self, h: torch.Tensor, z: torch.Tensor | None = None, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        x = h if self.split is None else self.split.inverse(h, z, temperature, generator)
        for layer in reversed(self.post):
            x = layer.inverse(x)
        if self.squeeze_first or self.split is not None:
            x = unsqueeze(x)
        for layer in reversed(self.pre):
            x = layer.inverse(x)
        return x


# ---------------------------------------------------------------- the network

def glow_level(c: int, cfg: Config, last: bool) -> Level:
    """squeeze, K x [act-norm, 1x1 conv, coupling], factor-out (unless last); c = channels after the squeeze."""
    post: list[nn.Module] = []
    for _ in range(cfg.depth):
        post += [ActNorm(c), InvConv1x1(c),
                 Coupling(c, cfg.width, "channel", 0, cfg.coupling == "additive", cfg.scale_fn)]
    return Level([], post, None if last else SplitPrior(c, cfg.learned_prior == "yes"), squeeze_first=True)


def realnvp_level(c: int, cfg: Config, last: bool) -> Level:
    """K checkerboard couplings, squeeze, K channel couplings, factor-out; the last level: K + 1 checkerboard ones.
    Masks alternate; act-norm after every coupling. c = channels before the squeeze."""
    def coupling(channels: int, mask: str, i: int) -> list[nn.Module]:
        return [Coupling(channels, cfg.width, mask, i % 2, cfg.coupling == "additive", cfg.scale_fn),
                ActNorm(channels)]
    pre = [m for i in range(cfg.depth + last) for m in coupling(c, "checkerboard", i)]
    post = [] if last else [m for i in range(cfg.depth) for m in coupling(4 * c, "channel", i)]
    return Level(pre, post, None if last else SplitPrior(4 * c, cfg.learned_prior == "yes"), squeeze_first=False)


class Flow(nn.Module):
    """The multi-scale flow: x01 (B, C, H, W) in [0, 1) <-> latents z_1 .. z_L (z_L the top)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocess = Preprocess(cfg.preprocess, cfg.logit_alpha)
        levels, shapes = [], []
        c, s = cfg.channels, cfg.image_size
        for i in range(cfg.levels):
            last = i == cfg.levels - 1
            if cfg.flow == "glow":
                levels.append(glow_level(4 * c, cfg, last))
            else:
                levels.append(realnvp_level(c, cfg, last))
            if cfg.flow == "glow" or not last:
                c, s = 4 * c, s // 2  # squeezed
            if not last:
                shapes.append((c - c // 2, s, s))  # factored out
                c = c // 2
        shapes.append((c, s, s))  # the top
        self.levels = nn.ModuleList(levels)
        self.z_shapes = shapes  # (C, H, W) of z_1 .. z_L

    def forward(self, x01: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """x01 -> (latents [z_1, .., z_L], sum of log-dets (B,), log p(z) (B,))."""
        h, logdet = self.preprocess(x01)
        log_pz, zs = h.new_zeros(h.shape[0]), []
        for level in self.levels:
            h, z, ld, lp = level(h)
            logdet, log_pz = logdet + ld, log_pz + lp
            if z is not None:
                zs.append(z)
        zs.append(h)
        return zs, logdet, log_pz + gaussian_log_prob(h)  # the top prior N(0, I)

    def inverse(self, zs: list[torch.Tensor] | None = None, n: int = 0, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents -> x01; zs None draws n samples at `temperature` (each z_i's std times T)."""
        device = next(self.parameters()).device
        if zs is None:
            h = temperature * torch.randn(n, *self.z_shapes[-1], generator=generator).to(device)
        else:
            h = zs[-1]
        for i in reversed(range(len(self.levels))):
            z = None if zs is None or self.levels[i].split is None else zs[i]
            h = self.levels[i].inverse(h, z, temperature, generator)
        return self.preprocess.inverse(h)


@torch.no_grad()
def initialize(flow: Flow, x01: torch.Tensor) -> None:
    """Act-norm's data-dependent init (Glow Sec. 3.1): one forward pass sets every uninitialised act-norm."""
    flow(x01)


# ---------------------------------------------------------------- objective

def log_prob(flow: nn.Module, x01: torch.Tensor) -> torch.Tensor:
    """log p(x01) = log p(z) + sum of log-dets, nats per image (B,) (RealNVP Eq. 3). flow may be DDP-wrapped."""
    _, logdet, log_pz = flow(x01)
    return log_pz + logdet


def bits_per_dim(nll_nats: torch.Tensor, num_dims: int) -> torch.Tensor:
    """Per image (B,): (nll - D log(1/256)) / (D ln 2), the 8-bit scale (Glow Eq. 2; shared.metrics'
    dequantized_bits_per_dim(nll, D, 1 / 256), kept as a tensor so the loss can be backpropagated)."""
    return (nll_nats + num_dims * math.log(256)) / (num_dims * math.log(2))


# ---------------------------------------------------------------- sampling, encoding

def to_x01(images: torch.Tensor) -> torch.Tensor:
    return (images.float() + 1) / 2


@torch.no_grad()
def sample(flow: Flow, n: int, temperature: float = 0.7, generator: torch.Generator | None = None,
           batch_size: int = 256) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1] at temperature T (Glow Sec. 6)."""
    out = [flow.inverse(n=min(batch_size, n - i), temperature=temperature, generator=generator)
           for i in range(0, n, batch_size)]
    return (torch.cat(out).clamp(0, 1) * 2 - 1).cpu()


@torch.no_grad()
def encode(flow: Flow, images: torch.Tensor) -> torch.Tensor:
    """images in [-1, 1] -> every latent flattened and concatenated, (B, D)."""
    device = next(flow.parameters()).device
    zs, _, _ = flow(to_x01(images).to(device))
    return torch.cat([z.flatten(1) for z in zs], dim=1)


@torch.no_grad()
def decode(flow: Flow, z: torch.Tensor) -> torch.Tensor:
    """(B, D) latents from encode -> images in [-1, 1] (not clamped: a reconstruction check sees every error)."""
    zs, start = [], 0
    for shape in flow.z_shapes:
        size = math.prod(shape)
        zs.append(z[:, start:start + size].reshape(-1, *shape))
        start += size
    return flow.inverse(zs) * 2 - 1


def reconstruct(flow: Flow, images: torch.Tensor) -> torch.Tensor:
    """x -> f^-1(f(x)): the flow's reconstruction check (equal to x up to float rounding)."""
    return decode(flow, encode(flow, images)).cpu()


@torch.no_grad()
def interpolate(flow: Flow, x0: torch.Tensor, x1: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Images along the straight line between the latents of two images (C, H, W) in [-1, 1]: (steps, C, H, W)."""
    z = encode(flow, torch.stack([x0, x1]))
    t = torch.linspace(0, 1, steps, device=z.device)[:, None]
    return decode(flow, (1 - t) * z[0] + t * z[1]).clamp(-1, 1).cpu()
