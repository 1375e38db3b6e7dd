"""StyleGAN2: a style-based generator with weight demodulation, trained with lazy R1 and style mixing.

Karras, Laine, Aittala, Hellsten, Lehtinen & Aila, "Analyzing and Improving the Image Quality of StyleGAN",
CVPR 2020. https://arxiv.org/abs/1912.04958 (StyleGAN2; "the paper" below)
Karras, Laine & Aila, "A Style-Based Generator Architecture for Generative Adversarial Networks", CVPR 2019.
https://arxiv.org/abs/1812.04948 (StyleGAN: mapping network, styles, noise inputs, style mixing, truncation)

Generator (config E/F of the paper, "skip" generator of Fig. 7):
  * mapping f: z (normalised to unit RMS) -> w through 8 fully connected layers, learning rate x 0.01;
  * synthesis g: a learned constant 4x4 input; per resolution an upsampling modulated 3x3 conv and a modulated
    3x3 conv, each followed by per-pixel noise times a learned strength, a bias and a leaky ReLU;
    modulation / demodulation (Eq. 1-3, layers.ModulatedConv2d) as one grouped convolution per layer;
  * skip outputs: every resolution has a modulated 1x1 tRGB (no demodulation), and the image is the sum of the
    upsampled tRGB outputs (Fig. 7b);
  * one w per layer (ws, shape (B, num_ws, w_dim)): the same w everywhere, or two with style mixing.
Discriminator: the residual D of Fig. 7c: fRGB at full resolution, residual blocks (two 3x3 convs, the second
downsampling; a 1x1 downsampling skip; sum times 1/sqrt(2)) down to 4x4, minibatch standard deviation
(ProGAN Sec. 3: the std of each feature over groups of 4 samples, averaged into one extra feature map), a 3x3
conv and two fully connected layers. Every layer uses the equalised learning rate (layers.py).

Objective (StyleGAN2 App. B), softplus(t) = log(1 + e^t), D returns a logit:
    L_D = E[softplus(D(G(z)))] + E[softplus(-D(x))]                    (discriminator_loss)
    L_G = E[softplus(-D(G(z)))]                                        (generator_loss, non-saturating)
    R1  = gamma/2 E_x ||grad_x D(x)||^2                                (r1_penalty; Mescheder et al. 2018 Eq. 9)
    PL  = E_{w,y} (||J_w^T y||_2 - a)^2,  y ~ N(0, I)/sqrt(H W)        (path_length_penalty; the paper's Eq. 4)
with a the running mean of ||J_w^T y||. Lazy regularisation (Sec. 3.1): R1 every 16 D steps and PL every 4 G steps,
each times its interval, in their own optimizer steps; Adam's lr and betas are scaled by c = k / (k + 1) (App. B).
Style mixing regularisation (StyleGAN Sec. 3.1): with probability 0.9 a second z takes over from a random layer on.
Sampling uses an exponential moving average of G's weights (Karras et al. 2018); the truncation trick
(StyleGAN Eq. 3) is w' = w_avg + psi (w - w_avg), w_avg a running mean of f(z) tracked during training.

Conventions: images in [-1, 1], (B, C, H, W); G's output is linear (sample() clamps); losses are batch means;
"layer index" = the index into ws: 0 = the 4x4 conv, then two per resolution (the tRGB of a block shares the index
of the next block's first conv, as in the official code), num_ws = 2 log2(size) - 2.

Deviations:
  * train.py's defaults are sized for a CPU: widths 32 (paper: 512 up to 32x32), z and w 128-d (paper: 512),
    batch 32, and a mapping network of 2 layers (paper: 8; lr multiplier 0.01 as the paper). With 8 layers every
    4-minute MNIST probe collapsed to one digit (a deep random MLP maps different z to w's with cosine ~0.73, and
    at lr x 0.01 it barely moves in a CPU budget); with 2 (StyleGAN2-ADA's small-data choice) samples vary
    (EXPERIMENTS.md). `--mapping-layers 8 --g-width 512 --d-width 512 --z-dim 512 --w-dim 512` is the paper's net;
    Config's own defaults keep 8 layers.
  * R1 gamma defaults to 0.01 (StyleGAN2-ADA's CIFAR-10 value; the heuristic 2e-4 N^2 / batch gives 0.0064 here);
    the paper's FFHQ uses 10. Path-length regularisation is off by default (`--pl-weight 2` is the paper's).
  * One G forward per step is shared by the D and G phases (G(z) detached for D, as DCGAN/train.py does); the
    official code draws fresh z for each phase. The expectation is the same; it saves a G forward per step.
  * Noise strength is one learned scalar per layer, as in the official StyleGAN2 code (StyleGAN: per channel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from layers import EqualConv2d, EqualLinear, ModulatedConv2d, fir_kernel, lrelu, upsample2d


@dataclass
class Config:
    image_size: int = 32  # H = W, a power of two >= 8
    channels: int = 1  # image channels (1 grayscale, 3 RGB)
    z_dim: int = 128  # latent z dimension (paper: 512)
    w_dim: int = 128  # intermediate latent w dimension (paper: 512)
    mapping_layers: int = 8  # fully connected layers of the mapping network (paper: 8)
    mapping_lr_mul: float = 0.01  # learning-rate multiplier of the mapping network (paper: 0.01)
    g_width: int = 64  # G channels at every resolution up to 32 (halving per doubling above 64; paper: 512)
    d_width: int = 64  # D channels, the same rule (paper: 512)
    mbstd_group: int = 4  # minibatch-stddev group size (paper: 4)
    w_avg_beta: float = 0.995  # decay of the tracked mean of w (official code: 0.995)

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"StyleGAN needs --image-size a power of two >= 8, got {self.image_size}")

    @property
    def resolutions(self) -> list[int]:
        """4, 8, ..., image_size."""
        return [2 ** i for i in range(2, int(math.log2(self.image_size)) + 1)]

    @property
    def num_ws(self) -> int:
        """Style inputs of the synthesis network (one per conv, the last tRGB one more)."""
        return 2 * len(self.resolutions)


def width_at(width: int, res: int) -> int:
    """Channels at a resolution: `width` up to 64x64, halving per doubling above (StyleGAN2's table, scaled)."""
    return max(width * 64 // res, 1) if res > 64 else width


# ---------------------------------------------------------------- generator

class MappingNetwork(nn.Module):
    """f: z (B, z_dim) -> w (B, w_dim): normalise z, then `mapping_layers` FC + lrelu at lr x mapping_lr_mul."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=cfg.mapping_lr_mul, activation=True)
                                      for a, b in zip(dims[:-1], dims[1:])])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # unit RMS (StyleGAN's pixel norm of z)
        return self.layers(z)


class SynthesisLayer(nn.Module):
    """Modulated conv (Eq. 1-3) + noise * learned strength + bias + lrelu: (B, C_in, H, W) -> (B, C_out, H', W')."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, resolution: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(1))  # starts at 0: noise is learned to be used
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))  # for noise_mode "const"

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                rng: torch.Generator | None = None) -> torch.Tensor:
        """noise_mode: random (fresh N(0, 1) per sample; from `rng` if given) | const (a fixed map) | none."""
        x = self.conv(x, w)
        if noise_mode == "random":
            shape = (x.shape[0], 1, *x.shape[2:])
            noise = torch.randn(shape, device=x.device) if rng is None else torch.randn(shape, generator=rng)
            x = x + noise.to(x.device, x.dtype) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength
        return lrelu(x + self.bias.to(x.dtype)[None, :, None, None])


class ToRGB(nn.Module):
    """tRGB: modulated 1x1 conv without demodulation, + bias: (B, C, H, W) -> (B, channels, H, W)."""

    def __init__(self, c_in: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None]


class Generator(nn.Module):
    """G = g o f: z (B, z_dim) -> image (B, C, H, W), roughly in [-1, 1] (linear output)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))  # running mean of w, the truncation centre
        res = cfg.resolutions
        c4 = width_at(cfg.g_width, 4)
        self.const = nn.Parameter(torch.randn(1, c4, 4, 4))  # the learned constant input
        self.layers = nn.ModuleList([SynthesisLayer(c4, c4, cfg.w_dim, 4)])
        self.to_rgbs = nn.ModuleList([ToRGB(c4, cfg.channels, cfg.w_dim)])
        for prev, r in zip(res[:-1], res[1:]):
            a, b = width_at(cfg.g_width, prev), width_at(cfg.g_width, r)
            self.layers.extend([SynthesisLayer(a, b, cfg.w_dim, r, up=True), SynthesisLayer(b, b, cfg.w_dim, r)])
            self.to_rgbs.append(ToRGB(b, cfg.channels, cfg.w_dim))
        self.register_buffer("fir", fir_kernel(), persistent=False)

    def map(self, z: torch.Tensor, z_mix: torch.Tensor | None = None, cutoff: int | None = None,
            psi: float = 1.0) -> torch.Tensor:
        """ws (B, num_ws, w_dim): f(z) at every layer; layers >= cutoff take f(z_mix) (style mixing). In training
        mode w_avg tracks the mean of f(z). psi < 1 truncates towards w_avg (StyleGAN Eq. 3)."""
        w = self.mapping(z)
        if self.training:
            self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.cfg.w_avg_beta))
        ws = w[:, None].expand(-1, self.cfg.num_ws, -1)  # (B, num_ws, w_dim)
        if z_mix is not None and cutoff is not None and cutoff < self.cfg.num_ws:
            layer = torch.arange(self.cfg.num_ws, device=z.device)[None, :, None]
            ws = torch.where(layer < cutoff, ws, self.mapping(z_mix)[:, None])
        return truncate(ws, self.w_avg, psi)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random",
                  rng: torch.Generator | None = None) -> torch.Tensor:
        """g: ws (B, num_ws, w_dim) -> image (B, C, H, W); the image is the sum of upsampled tRGB outputs."""
        x = self.const.expand(ws.shape[0], -1, -1, -1)  # (B, C, 4, 4)
        x = self.layers[0](x, ws[:, 0], noise_mode, rng)
        image = self.to_rgbs[0](x, ws[:, 1])
        for i, to_rgb in enumerate(self.to_rgbs[1:]):
            k = 2 * i + 1  # this block's first ws index
            x = self.layers[k](x, ws[:, k], noise_mode, rng)
            x = self.layers[k + 1](x, ws[:, k + 1], noise_mode, rng)
            image = upsample2d(image, self.fir) + to_rgb(x, ws[:, k + 2])  # skip connection (Fig. 7b)
        return image

    def forward(self, z: torch.Tensor, z_mix: torch.Tensor | None = None, cutoff: int | None = None,
                psi: float = 1.0, noise_mode: str = "random", return_ws: bool = False):
        ws = self.map(z, z_mix, cutoff, psi)
        image = self.synthesis(ws, noise_mode)
        return (image, ws) if return_ws else image


# ---------------------------------------------------------------- discriminator

class ResidualBlock(nn.Module):
    """D block (Fig. 7c): 3x3 conv, 3x3 conv down, 1x1 down skip; (main + skip) / sqrt(2): (B, C, H, W) -> H/2."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(c_in, c_in, 3, activation=True)
        self.conv1 = EqualConv2d(c_in, c_out, 3, activation=True, down=True)
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * (1 / math.sqrt(2))


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append the mean over (C, H, W) of each feature's std within groups of `group` samples (ProGAN Sec. 3):
    (B, C, H, W) -> (B, C + 1, H, W). Groups have G = gcd(group, B) samples; samples i, i + B/G, ... form one."""
    b, c, h, w = x.shape
    g = math.gcd(group, b)
    y = x.float().reshape(g, b // g, c, h, w)  # (G, M, C, H, W), as the official code groups
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (M,): one std per group
    y = y.repeat(g)[:, None, None, None].expand(b, 1, h, w)  # sample n gets its group's std (n % M)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class Discriminator(nn.Module):
    """D: image (B, C, H, W) -> logit (B,), large for images it believes are real."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        res = cfg.resolutions[::-1]  # image_size, ..., 4
        self.from_rgb = EqualConv2d(cfg.channels, width_at(cfg.d_width, res[0]), 1, activation=True)
        self.blocks = nn.Sequential(*[ResidualBlock(width_at(cfg.d_width, a), width_at(cfg.d_width, b))
                                      for a, b in zip(res[:-1], res[1:])])
        c4 = width_at(cfg.d_width, 4)
        self.conv = EqualConv2d(c4 + 1, c4, 3, activation=True)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = minibatch_stddev(self.blocks(self.from_rgb(x)), self.cfg.mbstd_group)  # (B, C + 1, 4, 4)
        return self.out(self.fc(self.conv(h).flatten(1))).flatten().float()  # (B,)


# ---------------------------------------------------------------- objective

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[softplus(D(G(z)))] + E[softplus(-D(x))] (the logistic loss, App. B)."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating L_G = E[softplus(-D(G(z)))] = -E[log sigma(D(G(z)))] (Goodfellow et al. 2014)."""
    return F.softplus(-fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 = gamma/2 E_x ||grad_x D(x)||^2 (Mescheder et al. 2018, Eq. 9); real (B, C, H, W) requires grad.
    The gradient keeps its graph (create_graph) so that backpropagating R1 reaches D's weights."""
    grad, = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)  # (B, C, H, W)
    return gamma / 2 * grad.float().square().flatten(1).sum(1).mean()


def path_length_penalty(images: torch.Tensor, ws: torch.Tensor, pl_mean: torch.Tensor,
                        decay: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4: E (||J_w^T y|| - a)^2 with y ~ N(0, I) / sqrt(H W) and J_w the Jacobian of the image wrt w.
    ||J_w^T y|| per sample is sqrt(mean over layers of the squared norm over w_dim) (official code); a is the
    running mean pl_mean, updated in place with `decay`. Returns (penalty, lengths (B,))."""
    y = torch.randn_like(images, dtype=torch.float32) / math.sqrt(images.shape[2] * images.shape[3])
    grad, = torch.autograd.grad((images.float() * y).sum(), ws, create_graph=True)  # J^T y, (B, num_ws, w_dim)
    lengths = grad.float().square().sum(2).mean(1).sqrt()  # (B,)
    pl_mean.copy_(pl_mean.lerp(lengths.detach().mean(), decay))
    return (lengths - pl_mean).square().mean(), lengths


def mixing_cutoff(num_ws: int, prob: float, generator: torch.Generator | None = None) -> int:
    """Style mixing regularisation: with probability `prob` a layer index in [1, num_ws) from which the second
    latent takes over, else num_ws (no mixing). Drawn from torch's RNG, so resume replays it."""
    if torch.rand((), generator=generator).item() < prob:
        return int(torch.randint(1, num_ws, (), generator=generator))
    return num_ws


# ---------------------------------------------------------------- EMA and sampling

@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """theta_ema <- beta theta_ema + (1 - beta) theta; buffers (w_avg, the constant noise) are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_beta(batch: int, images_seen: int, half_life_kimg: float, rampup: float) -> float:
    """Per-step decay for an EMA with a half-life of half_life_kimg thousand images, ramped up as
    min(half-life, rampup * images seen) (StyleGAN2-ADA's ema_kimg / ema_rampup): beta = 0.5^(batch / half-life)."""
    half_life = half_life_kimg * 1000
    if rampup > 0:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """The truncation trick (StyleGAN Eq. 3): w' = w_avg + psi (w - w_avg); psi = 1 leaves w unchanged."""
    return ws if psi == 1 else w_avg.to(ws.dtype).lerp(ws, psi)


@torch.no_grad()
def sample(G: Generator, n: int, z: torch.Tensor | None = None, rng: torch.Generator | None = None,
           psi: float = 1.0, noise_mode: str = "random", batch_size: int = 256) -> torch.Tensor:
    """n images (n, C, H, W) clamped to [-1, 1] from z ~ N(0, I) (or the given (n, z_dim) z); with `rng` the
    per-layer noise is drawn from it too, so the images are reproducible."""
    device = G.const.device
    if z is None:
        z = torch.randn(n, G.cfg.z_dim, generator=rng)
    return torch.cat([G.synthesis(G.map(c.to(device), psi=psi), noise_mode, rng)
                      for c in z.split(batch_size)]).clamp(-1, 1)


@torch.no_grad()
def style_mixing_grid(G: Generator, z_rows: torch.Tensor, z_cols: torch.Tensor, cutoff: int,
                      psi: float = 1.0) -> torch.Tensor:
    """StyleGAN Fig. 3: image (r, c) takes ws[:cutoff] (coarse styles) from row latent r and ws[cutoff:] (fine
    styles) from column latent c, constant noise. Returns (1 + R) x (1 + C) images, row-major: the top row is the
    column sources (after a blank), the left column the row sources."""
    device = G.const.device
    w_r, w_c = G.map(z_rows.to(device), psi=psi), G.map(z_cols.to(device), psi=psi)  # (R | C, num_ws, w_dim)
    rows, cols = len(w_r), len(w_c)
    mixed = torch.cat([w_r[:, None, :cutoff].expand(-1, cols, -1, -1),
                       w_c[None, :, cutoff:].expand(rows, -1, -1, -1)], dim=2).flatten(0, 1)  # (R*C, num_ws, w_dim)
    images = [G.synthesis(ws, "const").clamp(-1, 1) for ws in (w_r, w_c, mixed)]
    blank = -torch.ones_like(images[0][:1])
    top = torch.cat([blank, images[1]])  # (1 + C, ...)
    body = torch.cat([images[0][:, None], images[2].reshape(rows, cols, *images[2].shape[1:])], 1)
    return torch.cat([top, body.flatten(0, 1)])


@torch.no_grad()
def interpolate_w(G: Generator, z0: torch.Tensor, z1: torch.Tensor, steps: int = 10,
                  psi: float = 1.0) -> torch.Tensor:
    """Images along the straight line from f(z0) to f(z1) in w space (StyleGAN Sec. 4.2's perceptual path),
    constant noise: (steps, C, H, W)."""
    device = G.const.device
    w = G.map(torch.stack([z0, z1]).to(device), psi=psi)[:, 0]  # (2, w_dim)
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    ws = w[0].lerp(w[1], t)[:, None].expand(-1, G.cfg.num_ws, -1)  # (steps, num_ws, w_dim)
    return G.synthesis(ws, "const").clamp(-1, 1)
