"""DDPM: Denoising Diffusion Probabilistic Models, with the DDIM sampler.

Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020. https://arxiv.org/abs/2006.11239
Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021. https://arxiv.org/abs/2010.02502
Cosine schedule: Nichol & Dhariwal, "Improved DDPM", ICML 2021 (Eq. 17). https://arxiv.org/abs/2102.09672
v-prediction: Salimans & Ho, "Progressive Distillation", ICLR 2022 (Sec. 4). https://arxiv.org/abs/2202.00512

Forward process (Ho et al. Eq. 2, 4), alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s:
    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                          (q_sample)
Posterior (Eq. 6, 7):
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I),  beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
    mu~_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
Training (Eq. 14, Algorithm 1): L_simple = E_{t, x_0, eps} || eps - eps_theta(x_t, t) ||^2           (l_simple)
    or with --prediction v: || v - v_theta ||^2, v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0.
Ancestral sampling (Algorithm 2): x_{t-1} = mu_theta(x_t, t) + sigma_t z, sigma_t^2 = beta~_t    (ancestral_step)
DDIM (Song et al. Eq. 12), on a sub-sequence tau of the timesteps:                                  (ddim_step)
    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)  (Eq. 16)
  eta = 0 is deterministic; eta = 1 over all T steps is the ancestral sampler above.
Variational bound (Eq. 5, Sec. 3.3) L = L_T + sum_{t=2}^T L_{t-1} + L_0 in nats per image        (variational_bound)
    L_T = KL(q(x_T|x_0) || N(0, I)), L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p_theta(x_{t-1}|x_t)),
    L_0 = -log p_theta(x_0|x_1), the discrete decoder of Eq. 13 (Gaussian mass of each pixel's 8-bit bin).

Conventions: images in [-1, 1], shape (B, C, H, W). Time t runs 1..T as in the paper; the schedule's arrays are
indexed by t with entry 0 = no noise (alpha_bar_0 = 1, beta_0 = 0). The network sees the integer t. Losses are
means over batch and pixels; the bound is a sum over pixels (nats per image). x0_hat is clipped to [-1, 1] when
sampling (Ho et al.'s code), and eps_hat is then re-derived from the clipped x0_hat so DDIM and the ancestral
sampler stay the same process.

Deviations:
  * The default network is smaller than the paper's CIFAR-10 U-Net (train.py: width 32, channel multipliers
    1,2,2, one residual block per level, attention at 8x8, dropout 0) so a CPU trains it in minutes; the paper's
    is `--width 128 --mults 1,2,2,2 --blocks 2 --attn 16 --dropout 0.1`.
  * train.py defaults to v-prediction and the cosine schedule (the paper: eps, linear; `--prediction eps
    --schedule linear`): at a 10-minute budget they remove the grey-background samples (EXPERIMENTS.md).
  * sigma_t^2 = beta~_t (the paper's "fixed small" variance), with sigma_1^2 := beta~_2 in the bound's decoder
    L_0 (beta~_1 = 0), as in Ho et al.'s code. The paper's CIFAR samples used sigma_t^2 = beta_t.
  * The EMA decay is warmed up, min(decay, (1 + step) / (10 + step)), so a short run averages its recent weights
    rather than its initialisation (the paper: 0.9999 throughout, over 800k steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")


@dataclass
class Config:
    image_size: int = 32  # H = W, divisible by 2^(len(mults) - 1)
    channels: int = 1  # image channels
    width: int = 32  # channels of the first level (paper: 128)
    mults: str = "1,2,2"  # channel multiplier of each resolution level, comma-separated (paper CIFAR: 1,2,2,2)
    blocks: int = 1  # residual blocks per level (paper: 2)
    attn: str = "8"  # resolutions with self-attention, comma-separated ("" = none; paper: 16)
    dropout: float = 0.0  # dropout inside the residual blocks (paper CIFAR: 0.1)
    timesteps: int = 1000  # T
    schedule: str = "linear"  # linear (beta 1e-4 -> 0.02, paper) | cosine (Nichol & Dhariwal)
    prediction: str = "eps"  # what the network predicts: eps (paper) | v (Salimans & Ho)

    def __post_init__(self) -> None:
        levels = self.levels
        if self.image_size % 2 ** (len(levels) - 1):
            raise ValueError(f"--image-size {self.image_size} must be divisible by 2^{len(levels) - 1} (--mults)")
        if self.schedule not in SCHEDULES or self.prediction not in PREDICTIONS:
            raise ValueError(f"--schedule must be one of {SCHEDULES} and --prediction one of {PREDICTIONS}")
        if min(self.width, self.blocks, self.timesteps - 1, *levels) <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("--width, --blocks, --mults must be positive, --timesteps >= 2, --dropout in [0, 1)")

    @property
    def levels(self) -> list[int]:
        return [int(m) for m in self.mults.split(",")]

    @property
    def attn_resolutions(self) -> set[int]:
        return {int(r) for r in self.attn.split(",") if r.strip()}


# ---------------------------------------------------------------- noise schedule

class Schedule:
    """beta_t, alpha_bar_t and the coefficients of q, indexed by t = 0..T (float64; entry 0 = no noise)."""

    def __init__(self, kind: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        if kind == "linear":  # Ho et al. Sec. 4: beta from 1e-4 to 0.02 (scaled to T = 1000)
            betas = torch.linspace(beta_start * 1000 / T, beta_end * 1000 / T, T, dtype=torch.float64).clamp(max=0.999)
        else:  # Nichol & Dhariwal Eq. 17: alpha_bar(t) = f(t) / f(0), f = cos^2(pi/2 (t/T + s) / (1 + s)), s = 0.008
            f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.T = T
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        self.alpha_bar = torch.cumprod(1 - self.betas, 0)
        ab, ab_prev = self.alpha_bar[1:], self.alpha_bar[:-1]
        self.posterior_var = torch.cat([torch.zeros(1, dtype=torch.float64), betas * (1 - ab_prev) / (1 - ab)])  # Eq. 7

    def at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, 1, 1) in like's dtype and device."""
        return values.to(like.device)[t].to(like.dtype).view(-1, *[1] * (like.dim() - 1))


def schedule_of(cfg: Config) -> Schedule:
    return Schedule(cfg.schedule, cfg.timesteps)


# ---------------------------------------------------------------- building blocks

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer t (B,) -> (B, dim), as in the Transformer (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(32, C / 4) groups (the paper's 32 at C >= 128), fewer when C does not divide.

    Groups keep at least 4 channels: ResBlock adds the time embedding per channel just before its second norm,
    and a one-channel group subtracts every per-channel constant, so gcd(32, C) groups (one channel each at
    C = 16 or 32) would erase the time embedding in every block of the first levels."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + projected time embedding, GroupNorm-SiLU-dropout-conv (zero-initialised), + skip."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2, self.dropout = norm(c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (Ho et al.'s code)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, residual, output projection zero-initialised."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm, self.qkv = norm(channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)  # (B, HW, C) each
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj(h.transpose(1, 2).reshape(B, C, H, W))


class Level(nn.Module):
    """The residual blocks (each followed by attention at the listed resolutions) of one U-Net level."""

    def __init__(self, c_ins: list[int], c_out: int, t_dim: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, c_out, t_dim, dropout) for c in c_ins)
        self.attns = nn.ModuleList(Attention(c_out) if attention else nn.Identity() for _ in c_ins)


class UNet(nn.Module):
    """eps_theta(x_t, t) (or v_theta): the U-Net of Ho et al. Appendix B, sized by Config."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        w, t_dim = cfg.width, 4 * cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(w, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.conv_in = nn.Conv2d(cfg.channels, w, 3, padding=1)
        chans, skips, res = [w * m for m in cfg.levels], [w], cfg.image_size
        self.down, self.downsample, c = nn.ModuleList(), nn.ModuleList(), w
        for i, ch in enumerate(chans):  # down: blocks, then a stride-2 conv (not after the last level)
            self.down.append(Level([c] + [ch] * (cfg.blocks - 1), ch, t_dim, cfg.dropout, res in cfg.attn_resolutions))
            c = ch
            skips += [ch] * cfg.blocks
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            skips += [] if last else [c]
            res = res if last else res // 2
        self.mid1, self.mid_attn = ResBlock(c, c, t_dim, cfg.dropout), Attention(c)
        self.mid2 = ResBlock(c, c, t_dim, cfg.dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):  # up: blocks + 1 on concatenated skips, then upsample
            c_ins = []
            for _ in range(cfg.blocks + 1):
                c_ins.append(c + skips.pop())
                c = ch
            self.up.append(Level(c_ins, ch, t_dim, cfg.dropout, res in cfg.attn_resolutions))
            self.upsample.append(nn.Identity() if i == 0 else nn.Sequential(nn.Upsample(scale_factor=2.0),
                                                                            nn.Conv2d(c, c, 3, padding=1)))
            res = res if i == 0 else res * 2
        self.norm_out, self.conv_out = norm(c), nn.Conv2d(c, cfg.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), t (B,) integers in 1..T -> prediction (B, C, H, W)."""
        temb = self.time_mlp(timestep_embedding(t, self.cfg.width).to(x.dtype))
        h = self.conv_in(x)
        hs = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, temb))
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, hs.pop()], 1), temb))
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------- the objective

def q_sample(sch: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Eq. 4, reparameterised)."""
    ab = sch.at(sch.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def v_from_eps(sch: Schedule, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) x_0 with x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab), i.e.
    v = (eps - sqrt(1 - ab) x_t) / sqrt(ab)."""
    ab = sch.at(sch.alpha_bar, t, x_t)
    return (eps - (1 - ab).sqrt() * x_t) / ab.sqrt()


def eps_from_v(sch: Schedule, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - ab) x_t + sqrt(ab) v (Salimans & Ho Sec. 4; the inverse of v_from_eps)."""
    ab = sch.at(sch.alpha_bar, t, x_t)
    return (1 - ab).sqrt() * x_t + ab.sqrt() * v


def x0_from_eps(sch: Schedule, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) (Eq. 4 solved for x_0)."""
    ab = sch.at(sch.alpha_bar, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(sch: Schedule, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    ab = sch.at(sch.alpha_bar, t, x_t)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def l_simple(net: nn.Module, sch: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             prediction: str = "eps") -> torch.Tensor:
    """Eq. 14: mean ||eps - eps_theta(x_t, t)||^2 (or the v target), t (B,) in 1..T, noise ~ N(0, I)."""
    x_t = q_sample(sch, x0, t, noise)
    target = noise if prediction == "eps" else v_from_eps(sch, x_t, noise, t)
    return F.mse_loss(net(x_t, t).float(), target.float())


def predict(net: nn.Module, sch: Schedule, x_t: torch.Tensor, t: torch.Tensor, prediction: str,
            clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from the network's output; x0_hat clipped to [-1, 1] and eps_hat re-derived if clip."""
    out = net(x_t.to(next(net.parameters()).dtype), t).to(x_t.dtype)
    eps = out if prediction == "eps" else eps_from_v(sch, x_t, out, t)
    x0 = x0_from_eps(sch, x_t, eps, t)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(sch, x_t, x0, t)
    return x0, eps


def q_posterior(sch: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean mu~_t(x_t, x_0) and variance beta~_t of q(x_{t-1} | x_t, x_0) (Eq. 6, 7), t >= 1."""
    ab, ab_prev = sch.at(sch.alpha_bar, t, x_t), sch.at(sch.alpha_bar, t - 1, x_t)
    beta = sch.at(sch.betas, t, x_t)
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    return mean, sch.at(sch.posterior_var, t, x_t)


def normal_kl(mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element, in nats."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def discrete_decoder_nll(x0: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """L_0 = -log p(x_0 | x_1), Eq. 13: the N(mean, var) mass of each pixel's bin [x - 1/255, x + 1/255] (the
    edge bins open to -inf / +inf), x_0 on the 8-bit grid k / 127.5 - 1. Summed per image, nats (B,)."""
    std = var.sqrt()
    normal = torch.distributions.Normal(torch.zeros((), dtype=x0.dtype), torch.ones((), dtype=x0.dtype))
    upper = torch.where(x0 > 0.999, torch.ones_like(x0), normal.cdf((x0 + 1 / 255 - mean) / std))
    lower = torch.where(x0 < -0.999, torch.zeros_like(x0), normal.cdf((x0 - 1 / 255 - mean) / std))
    return -torch.log((upper - lower).clamp(min=1e-12)).flatten(1).sum(1)


@torch.no_grad()
def variational_bound(net: nn.Module, sch: Schedule, x0: torch.Tensor, timesteps: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """-log p(x_0) <= L_T + sum_{t=2}^T L_{t-1} + L_0 (Eq. 5), nats per image (B,), x0 in float64 on the 8-bit grid.

    timesteps None: every t = 2..T. Else a 1-D tensor of K timesteps from 2..T (one x_t each): their terms times
    (T - 1) / K, an unbiased estimate of the sum when the K are drawn uniformly or stratified (evaluate.py)."""
    T, B = sch.T, x0.shape[0]
    ab_T = sch.at(sch.alpha_bar, torch.full((B,), T), x0)
    l_T = normal_kl(ab_T.sqrt() * x0, 1 - ab_T, torch.zeros_like(x0), torch.ones_like(x0)).flatten(1).sum(1)
    noise = lambda: torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    t1 = torch.ones(B, dtype=torch.long)
    x0_hat, _ = predict(net, sch, q_sample(sch, x0, t1, noise()), t1, net.cfg.prediction)
    var1 = sch.at(sch.posterior_var, t1 + 1, x0)  # sigma_1^2 := beta~_2 (beta~_1 = 0)
    l_0 = discrete_decoder_nll(x0, x0_hat, var1)  # at t = 1 the posterior mean is x0_hat itself
    steps = torch.arange(2, T + 1) if timesteps is None else timesteps
    l_mid = torch.zeros(B, dtype=x0.dtype)
    for s in steps.tolist():
        t = torch.full((B,), s, dtype=torch.long)
        x_t = q_sample(sch, x0, t, noise())
        mean_q, var_q = q_posterior(sch, x0, x_t, t)
        mean_p, _ = q_posterior(sch, predict(net, sch, x_t, t, net.cfg.prediction)[0], x_t, t)
        l_mid += normal_kl(mean_q, var_q, mean_p, var_q).flatten(1).sum(1)
    return l_T + l_0 + l_mid * ((T - 1) / len(steps))


# ---------------------------------------------------------------- sampling

def ancestral_step(sch: Schedule, x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor,
                   z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 2, one step: (x_{t-1}, mean mu~_t(x_t, x0_hat), variance beta~_t); no noise at t = 1."""
    mean, var = q_posterior(sch, x0_hat, x_t, t)
    return mean + var.sqrt() * z, mean, var


def ddim_step(sch: Schedule, x0_hat: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
              eta: float, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Song et al. Eq. 12 with sigma of Eq. 16 (times eta): (x_{t_prev}, mean, variance sigma^2)."""
    ab, ab_prev = sch.at(sch.alpha_bar, t, x0_hat), sch.at(sch.alpha_bar, t_prev, x0_hat)
    var = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    mean = ab_prev.sqrt() * x0_hat + (1 - ab_prev - var).clamp(min=0).sqrt() * eps_hat
    return mean + var.sqrt() * z, mean, var


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """tau: `steps` timesteps from T down to 1, evenly spaced (steps = T gives T, T-1, ..., 1)."""
    return sorted({round(T - i * (T - 1) / max(steps - 1, 1)) for i in range(steps)}, reverse=True)


@torch.no_grad()
def sample(net: nn.Module, n: int, steps: int = 0, eta: float = 0.0, generator: torch.Generator | None = None,
           x_T: torch.Tensor | None = None, keep: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """n images (n, C, H, W) in [-1, 1] and, with keep K > 0, about K snapshots of x_t along the way.

    steps 0: ancestral DDPM over all T steps (Algorithm 2). steps S > 0: DDIM over S timesteps with `eta`.
    Noise comes from `generator` (seeded by the caller), or x_T is given."""
    cfg, sch = net.cfg, schedule_of(net.cfg)
    param = next(net.parameters())
    shape = (n, cfg.channels, cfg.image_size, cfg.image_size)
    randn = lambda: torch.randn(shape, generator=generator, dtype=param.dtype).to(param.device)
    x = randn() if x_T is None else x_T.to(param.device, param.dtype)
    taus = list(range(cfg.timesteps, 0, -1)) if steps == 0 else ddim_timesteps(cfg.timesteps, steps)
    every, trajectory = max(len(taus) // keep, 1) if keep else 0, []
    for i, s in enumerate(taus):
        t = torch.full((n,), s, dtype=torch.long, device=param.device)
        x0_hat, eps_hat = predict(net, sch, x, t, cfg.prediction)
        z = randn() if (steps == 0 or eta > 0) and s > 1 else torch.zeros_like(x)
        if steps == 0:
            x = ancestral_step(sch, x, x0_hat, t, z)[0]
        else:
            t_prev = torch.full_like(t, taus[i + 1] if i + 1 < len(taus) else 0)
            x = ddim_step(sch, x0_hat, eps_hat, t, t_prev, eta, z)[0]
        if every and (i % every == 0 or i == len(taus) - 1):
            trajectory.append(x.clamp(-1, 1))
    return x.clamp(-1, 1), trajectory


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> float:
    """theta_ema <- beta theta_ema + (1 - beta) theta, beta = min(decay, (1 + step) / (10 + step)): the warm-up
    keeps a short run's average off its random initialisation. Returns the beta used."""
    # Adapted from ConditionalGAN/model.py (ema_update): no buffers to copy (GroupNorm has none)
    beta = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - beta)
    return beta
