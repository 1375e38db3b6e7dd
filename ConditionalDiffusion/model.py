"""ConditionalDiffusion: a class-conditional DDPM sampled with classifier-free guidance.

Ho & Salimans, "Classifier-Free Diffusion Guidance", NeurIPS 2021 workshop / arXiv 2022. https://arxiv.org/abs/2207.12598
on top of Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020. https://arxiv.org/abs/2006.11239
and the DDIM sampler of Song, Meng & Ermon, ICLR 2021. https://arxiv.org/abs/2010.02502

The diffusion itself is DDPM's (this file copies DDPM/model.py's schedule, U-Net blocks and samplers, marked):
    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                      (DDPM Eq. 4, q_sample)
One network eps_theta(x_t, t, c) models both the conditional and the unconditional score: the label c is a
class 0..K-1 or the null label K (written "empty" in the paper), embedded by one table of K + 1 rows and added
to the time embedding (Ho & Salimans Sec. 3.2, as in Dhariwal & Nichol's class-conditional U-Net).
Training (Ho & Salimans Algorithm 1): c <- null with probability p_uncond (label dropout, drop_labels), then
DDPM's L_simple on eps_theta(x_t, t, c)                                                    (l_simple)
Sampling (Algorithm 2, Eq. 6): the guided prediction
    eps~ = eps_theta(x_t, t, null) + w (eps_theta(x_t, t, c) - eps_theta(x_t, t, null))       (guide)
i.e. w = 0 unconditional, w = 1 conditional, w > 1 guided (pushes away from the unconditional model). The
paper writes eps~ = (1 + w') eps_c - w' eps_u: our w is its 1 + w'. Both predictions come from ONE batched
forward of the concatenated (x_t, c) and (x_t, null) batch (guided_prediction); w = 0 and w = 1 need one of
them only and skip the other. eps~ then drives the ancestral sampler (DDPM Algorithm 2, sigma_t^2 = beta~_t) or
DDIM (Song et al. Eq. 12) exactly as in DDPM.

Conventions: images in [-1, 1], shape (B, C, H, W); t runs 1..T with schedule entry 0 = no noise (DDPM's);
labels y int64 in 0..K-1, K = the null label; losses are means over batch and pixels. With --prediction v the
network's v outputs are guided the same way: eps is affine in v for fixed x_t (eps = sqrt(1-ab) x_t +
sqrt(ab) v) and the guidance weights (1 - w, w) sum to 1, so guiding v and guiding eps are the same.

Deviations:
  * Small network for a CPU (train.py's defaults; DDPM's U-Net at width 16, mults 1,2,2, attention at 8x8);
    the paper's ImageNet 64x64 model is far larger. Ho & Salimans train a continuous-time model with the
    log-SNR parameterisation (Kingma et al. 2021) and sample with an ancestral sampler; we keep DDPM's discrete
    T = 1000 linear schedule and eps prediction, and sample with DDIM (20 steps) by default.
  * x0_hat of the guided prediction is clipped to [-1, 1] (DDPM's sampler; the paper does not clip).
  * The EMA decay is warmed up (DDPM's ema_update) so a 10-minute run samples its recent weights.
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
    num_classes: int = 10  # K real classes; the embedding table has K + 1 rows, row K is the null label
    width: int = 16  # channels of the first level (DDPM paper: 128)
    mults: str = "1,2,2"  # channel multiplier of each resolution level, comma-separated
    blocks: int = 1  # residual blocks per level (DDPM paper: 2)
    attn: str = "8"  # resolutions with self-attention, comma-separated ("" = none)
    dropout: float = 0.0  # dropout inside the residual blocks
    timesteps: int = 1000  # T
    schedule: str = "linear"  # linear (beta 1e-4 -> 0.02, DDPM) | cosine (Nichol & Dhariwal)
    prediction: str = "eps"  # what the network predicts: eps (DDPM) | v (Salimans & Ho)

    def __post_init__(self) -> None:
        levels = self.levels
        if self.image_size % 2 ** (len(levels) - 1):
            raise ValueError(f"--image-size {self.image_size} must be divisible by 2^{len(levels) - 1} (--mults)")
        if self.schedule not in SCHEDULES or self.prediction not in PREDICTIONS:
            raise ValueError(f"--schedule must be one of {SCHEDULES} and --prediction one of {PREDICTIONS}")
        if min(self.width, self.blocks, self.timesteps - 1, *levels) <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("--width, --blocks, --mults must be positive, --timesteps >= 2, --dropout in [0, 1)")
        if self.num_classes < 1:
            raise ValueError(f"a conditional model needs at least one class, got num_classes={self.num_classes}")

    @property
    def null_label(self) -> int:
        """The label of the unconditional model: the last row of the class-embedding table."""
        return self.num_classes

    @property
    def levels(self) -> list[int]:
        return [int(m) for m in self.mults.split(",")]

    @property
    def attn_resolutions(self) -> set[int]:
        return {int(r) for r in self.attn.split(",") if r.strip()}


# ---------------------------------------------------------------- noise schedule

# Copied from DDPM/model.py: Schedule
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


# Copied from DDPM/model.py: schedule_of
def schedule_of(cfg: Config) -> Schedule:
    return Schedule(cfg.schedule, cfg.timesteps)


# ---------------------------------------------------------------- building blocks

# Copied from DDPM/model.py: timestep_embedding
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer t (B,) -> (B, dim), as in the Transformer (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


# Copied from DDPM/model.py: norm
def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(32, C / 4) groups (the paper's 32 at C >= 128), fewer when C does not divide.

    Groups keep at least 4 channels: ResBlock adds the time embedding per channel just before its second norm,
    and a one-channel group subtracts every per-channel constant, so gcd(32, C) groups (one channel each at
    C = 16 or 32) would erase the time embedding in every block of the first levels."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


# Copied from DDPM/model.py: ResBlock
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


# Copied from DDPM/model.py: Attention
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


# Copied from DDPM/model.py: Level
class Level(nn.Module):
    """The residual blocks (each followed by attention at the listed resolutions) of one U-Net level."""

    def __init__(self, c_ins: list[int], c_out: int, t_dim: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, c_out, t_dim, dropout) for c in c_ins)
        self.attns = nn.ModuleList(Attention(c_out) if attention else nn.Identity() for _ in c_ins)


# Adapted from DDPM/model.py (UNet): adds the class embedding (K + 1 rows, the last the null label) to the time embedding
class UNet(nn.Module):
    """eps_theta(x_t, t, c) (or v_theta): DDPM's U-Net (Ho et al. Appendix B) with a class embedding."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        w, t_dim = cfg.width, 4 * cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(w, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, t_dim)  # row K = the null label (unconditional)
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

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), t (B,) integers in 1..T, y (B,) labels in 0..K (K = null) -> prediction (B, C, H, W)."""
        temb = self.time_mlp(timestep_embedding(t, self.cfg.width).to(x.dtype)) + self.class_emb(y).to(x.dtype)
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

# Copied from DDPM/model.py: q_sample
def q_sample(sch: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Eq. 4, reparameterised)."""
    ab = sch.at(sch.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


# Copied from DDPM/model.py: v_from_eps
def v_from_eps(sch: Schedule, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) x_0 with x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab), i.e.
    v = (eps - sqrt(1 - ab) x_t) / sqrt(ab)."""
    ab = sch.at(sch.alpha_bar, t, x_t)
    return (eps - (1 - ab).sqrt() * x_t) / ab.sqrt()


# Copied from DDPM/model.py: eps_from_v
def eps_from_v(sch: Schedule, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - ab) x_t + sqrt(ab) v (Salimans & Ho Sec. 4; the inverse of v_from_eps)."""
    ab = sch.at(sch.alpha_bar, t, x_t)
    return (1 - ab).sqrt() * x_t + ab.sqrt() * v


# Copied from DDPM/model.py: x0_from_eps
def x0_from_eps(sch: Schedule, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) (Eq. 4 solved for x_0)."""
    ab = sch.at(sch.alpha_bar, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


# Copied from DDPM/model.py: eps_from_x0
def eps_from_x0(sch: Schedule, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    ab = sch.at(sch.alpha_bar, t, x_t)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Ho & Salimans Algorithm 1, line 3: c <- null with probability p_uncond, independently per example."""
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return y.masked_fill(drop, null_label)


def l_simple(net: nn.Module, sch: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             y: torch.Tensor, prediction: str = "eps") -> torch.Tensor:
    """DDPM Eq. 14 on the conditional network: mean ||eps - eps_theta(x_t, t, c)||^2, c the (dropped) labels."""
    # Adapted from DDPM/model.py (l_simple): the network sees the label
    x_t = q_sample(sch, x0, t, noise)
    target = noise if prediction == "eps" else v_from_eps(sch, x_t, noise, t)
    return F.mse_loss(net(x_t, t, y).float(), target.float())


# ---------------------------------------------------------------- guidance

def guide(out_cond: torch.Tensor, out_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """eps~ = eps_u + w (eps_c - eps_u) (Ho & Salimans Eq. 6 with w = 1 + w'), written (1 - w) eps_u + w eps_c
    so that w = 0 returns eps_u and w = 1 returns eps_c bit for bit."""
    return (1 - w) * out_uncond + w * out_cond


def guided_prediction(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, w: float) -> torch.Tensor:
    """The guided network output for labels y (B,) in 0..K-1: both passes in one forward of the batch
    [(x_t, t, y); (x_t, t, null)] of 2B; w = 0 (unconditional) and w = 1 (conditional) run only the pass used."""
    null = torch.full_like(y, net.cfg.null_label)
    if w == 0:
        return net(x_t, t, null).to(x_t.dtype)
    if w == 1:
        return net(x_t, t, y).to(x_t.dtype)
    out = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null])).to(x_t.dtype)  # (2B, C, H, W)
    out_cond, out_uncond = out.chunk(2)  # in x_t's dtype: under bf16 autocast the guidance is still done in fp32
    return guide(out_cond, out_uncond, w)


def predict(net: nn.Module, sch: Schedule, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, w: float,
            prediction: str, clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from the guided output; x0_hat clipped to [-1, 1] and eps_hat re-derived if clip."""
    # Adapted from DDPM/model.py (predict): the guided prediction in place of net(x_t, t)
    out = guided_prediction(net, x_t.to(next(net.parameters()).dtype), t, y, w).to(x_t.dtype)
    eps = out if prediction == "eps" else eps_from_v(sch, x_t, out, t)
    x0 = x0_from_eps(sch, x_t, eps, t)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(sch, x_t, x0, t)
    return x0, eps


# Copied from DDPM/model.py: q_posterior
def q_posterior(sch: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean mu~_t(x_t, x_0) and variance beta~_t of q(x_{t-1} | x_t, x_0) (Eq. 6, 7), t >= 1."""
    ab, ab_prev = sch.at(sch.alpha_bar, t, x_t), sch.at(sch.alpha_bar, t - 1, x_t)
    beta = sch.at(sch.betas, t, x_t)
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    return mean, sch.at(sch.posterior_var, t, x_t)


# ---------------------------------------------------------------- sampling

# Copied from DDPM/model.py: ancestral_step
def ancestral_step(sch: Schedule, x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor,
                   z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 2, one step: (x_{t-1}, mean mu~_t(x_t, x0_hat), variance beta~_t); no noise at t = 1."""
    mean, var = q_posterior(sch, x0_hat, x_t, t)
    return mean + var.sqrt() * z, mean, var


# Copied from DDPM/model.py: ddim_step
def ddim_step(sch: Schedule, x0_hat: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
              eta: float, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Song et al. Eq. 12 with sigma of Eq. 16 (times eta): (x_{t_prev}, mean, variance sigma^2)."""
    ab, ab_prev = sch.at(sch.alpha_bar, t, x0_hat), sch.at(sch.alpha_bar, t_prev, x0_hat)
    var = eta ** 2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    mean = ab_prev.sqrt() * x0_hat + (1 - ab_prev - var).clamp(min=0).sqrt() * eps_hat
    return mean + var.sqrt() * z, mean, var


# Copied from DDPM/model.py: ddim_timesteps
def ddim_timesteps(T: int, steps: int) -> list[int]:
    """tau: `steps` timesteps from T down to 1, evenly spaced (steps = T gives T, T-1, ..., 1)."""
    return sorted({round(T - i * (T - 1) / max(steps - 1, 1)) for i in range(steps)}, reverse=True)


@torch.no_grad()
def sample(net: nn.Module, y: torch.Tensor, guidance: float, steps: int = 0, eta: float = 0.0,
           generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
           keep: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images (n, C, H, W) in [-1, 1] of the classes y (n,) with guidance weight w, and, with keep K > 0, about
    K snapshots of x_t along the way. steps 0: ancestral DDPM over all T steps; S > 0: DDIM over S timesteps."""
    # Adapted from DDPM/model.py (sample): labels y and the guidance weight, passed to predict
    cfg, sch = net.cfg, schedule_of(net.cfg)
    param = next(net.parameters())
    n, y = len(y), y.to(param.device)
    shape = (n, cfg.channels, cfg.image_size, cfg.image_size)
    randn = lambda: torch.randn(shape, generator=generator, dtype=param.dtype).to(param.device)
    x = randn() if x_T is None else x_T.to(param.device, param.dtype)
    taus = list(range(cfg.timesteps, 0, -1)) if steps == 0 else ddim_timesteps(cfg.timesteps, steps)
    every, trajectory = max(len(taus) // keep, 1) if keep else 0, []
    for i, s in enumerate(taus):
        t = torch.full((n,), s, dtype=torch.long, device=param.device)
        x0_hat, eps_hat = predict(net, sch, x, t, y, guidance, cfg.prediction)
        z = randn() if (steps == 0 or eta > 0) and s > 1 else torch.zeros_like(x)
        if steps == 0:
            x = ancestral_step(sch, x, x0_hat, t, z)[0]
        else:
            t_prev = torch.full_like(t, taus[i + 1] if i + 1 < len(taus) else 0)
            x = ddim_step(sch, x0_hat, eps_hat, t, t_prev, eta, z)[0]
        if every and (i % every == 0 or i == len(taus) - 1):
            trajectory.append(x.clamp(-1, 1))
    return x.clamp(-1, 1), trajectory


# Copied from DDPM/model.py: ema_update
@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> float:
    """theta_ema <- beta theta_ema + (1 - beta) theta, beta = min(decay, (1 + step) / (10 + step)): the warm-up
    keeps a short run's average off its random initialisation. Returns the beta used."""
    # Adapted from ConditionalGAN/model.py (ema_update): no buffers to copy (GroupNorm has none)
    beta = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - beta)
    return beta
