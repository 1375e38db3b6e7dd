"""Latent Diffusion: a KL-regularised autoencoder, then DDPM/DDIM diffusion in its latent space.

Rombach, Blattmann, Lorenz, Esser & Ommer, "High-Resolution Image Synthesis with Latent Diffusion Models",
CVPR 2022. https://arxiv.org/abs/2112.10752
Diffusion and samplers from Ho et al. 2020 (https://arxiv.org/abs/2006.11239) and Song et al. 2021 (DDIM,
https://arxiv.org/abs/2010.02502); classifier-free guidance: Ho & Salimans 2021 (https://arxiv.org/abs/2207.12598).

Stage 1, perceptual compression (Sec. 3.1). An encoder E maps x (H, W, C) to the mean and log-variance of a
diagonal Gaussian q(z | x) on z (H/f, W/f, c); a decoder D maps z back, x_hat = D(z). The "KL-reg." variant:
    L_AE = L_rec(x, D(z)) + w_KL KL(q(z | x) || N(0, I)),  z = mu + sigma * eps                 (autoencoder loss)
with w_KL small (1e-6 in the paper's code, Appendix G) so the latent stays nearly deterministic and detailed;
L_rec is L1 (default) or L2 here, summed over pixels; KL summed over latent dimensions (kl_divergence).
The latent scale (Sec. 4.3.2 / Appendix G, "we rescale the latents by the component-wise standard deviation"):
    s = 1 / std(z) over a batch of encoded training images, z' = s z                               (latent_scale)
so the diffusion sees latents of unit variance, matching the N(0, I) it starts from.
Stage 2, the latent diffusion model (Eq. 2): the DDPM objective on z' instead of x:
    L_LDM = E_{E(x), eps ~ N(0,1), t} || eps - eps_theta(z'_t, t) ||^2                                (l_simple)
with z'_t = sqrt(alpha_bar_t) z' + sqrt(1 - alpha_bar_t) eps (Ho et al. Eq. 4). Samples: z'_T ~ N(0, I),
DDIM (Song et al. Eq. 12) or ancestral (Ho et al. Algorithm 2) down to z'_0, then x = D(z'_0 / s).
Class conditioning (Eq. 3, with tau_theta a class embedding added to the time embedding) with classifier-free
guidance: the label is replaced by a null class with probability p_uncond in training, and sampling uses
    eps~ = eps_theta(z_t, t, null) + s_g (eps_theta(z_t, t, y) - eps_theta(z_t, t, null))         (guided_output)
s_g = 1 is the plain conditional model, s_g = 0 the unconditional one, s_g > 1 guided (the paper's "s").

Conventions: images in [-1, 1], shape (B, C, H, W); latents (B, c, H/f, W/f). Time t runs 1..T; the schedule's
arrays are indexed by t with entry 0 = no noise. The network sees integer t. The diffusion loss is a mean over
batch and latent dimensions; the autoencoder's terms are sums per image, averaged over the batch (the paper's
code). The decoder's raw output is trained; images are clamped to [-1, 1] only when decoded for viewing.

Deviations:
  * Much smaller networks (networks.py) than the paper's (KL-f4: 128 channels, mults 1,2,4, two residual
    blocks; LDM-4 U-Net: 224 channels): train.py's defaults are sized for a CPU in minutes (see README).
  * Stage 1 uses a reconstruction loss only: no LPIPS perceptual term (its VGG weights need a download) and no
    patch discriminator (it would about double stage 1's cost on a CPU and only pays off after long training).
  * The noise schedule is DDPM's (linear beta 1e-4 .. 0.02, or cosine), not the LDM configs' 0.0015 .. 0.0195
    "linear" range; x0_hat is not clipped while sampling (latents are not bounded), as in the paper's code.
  * The scale factor is computed once at the start of stage 2 from a fixed batch of training images (the paper's
    code: the first batch), z drawn from q(z | x) with a fixed seed; it is a buffer of the U-Net, saved with it.
  * The U-Net's residual blocks apply the time (+ class) embedding as a scale and shift after the second
    GroupNorm (Dhariwal & Nichol's AdaGN) rather than DDPM's shift before it, which a GroupNorm with one channel
    per group (narrow levels) cancels exactly.
  * Class conditioning uses an embedding added to the time embedding (the paper's class-conditional ImageNet
    model uses cross-attention on a learned class embedding); the EMA decay is warmed up (see DDPM).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from networks import Autoencoder

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
RECONSTRUCTIONS = ("l1", "l2")


@dataclass
class Config:
    image_size: int = 32  # H = W of the images, divisible by --factor
    channels: int = 1  # image channels
    # stage 1: the autoencoder
    factor: int = 4  # f, downsampling factor of the autoencoder (a power of 2): latents are H/f x W/f
    latent_channels: int = 4  # c, channels of the latent z (paper KL-f4: 3)
    ae_width: int = 16  # channels of the autoencoder's full-resolution level (x2 per level, at most x4; paper: 128)
    ae_blocks: int = 1  # residual blocks per autoencoder level (paper: 2)
    kl_weight: float = 1e-6  # w_KL, weight of the KL term (paper: 1e-6)
    reconstruction: str = "l1"  # l1 | l2, the reconstruction loss summed over pixels
    # stage 2: the latent U-Net
    width: int = 64  # channels of the U-Net's first level (paper LDM-4: 224)
    mults: str = "1,2"  # channel multiplier of each U-Net level, comma-separated
    blocks: int = 1  # residual blocks per U-Net level (paper: 2)
    attn: str = "4"  # latent resolutions with self-attention, comma-separated ("" = none)
    dropout: float = 0.0  # dropout inside the U-Net's residual blocks
    timesteps: int = 1000  # T
    schedule: str = "linear"  # linear (Ho et al.) | cosine (Nichol & Dhariwal)
    prediction: str = "eps"  # eps (paper) | v (Salimans & Ho)
    num_classes: int = 0  # > 0: class-conditional U-Net with a null class for classifier-free guidance

    def __post_init__(self) -> None:
        if self.factor < 1 or self.factor & (self.factor - 1) or self.image_size % self.factor:
            raise ValueError(f"--factor must be a power of 2 dividing --image-size {self.image_size}, got {self.factor}")
        levels = self.levels
        if self.latent_size % 2 ** (len(levels) - 1):
            raise ValueError(f"the latent size {self.latent_size} (--image-size / --factor) must be divisible by "
                             f"2^{len(levels) - 1} (--mults)")
        if self.schedule not in SCHEDULES or self.prediction not in PREDICTIONS:
            raise ValueError(f"--schedule must be one of {SCHEDULES} and --prediction one of {PREDICTIONS}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"--reconstruction must be one of {RECONSTRUCTIONS}, got {self.reconstruction!r}")
        if min(self.width, self.blocks, self.timesteps - 1, self.latent_channels, self.ae_width, self.ae_blocks,
               *levels) <= 0 or not 0 <= self.dropout < 1 or self.kl_weight < 0 or self.num_classes < 0:
            raise ValueError("network sizes must be positive, --timesteps >= 2, --dropout in [0, 1), --kl-weight >= 0")

    @property
    def latent_size(self) -> int:
        return self.image_size // self.factor

    @property
    def levels(self) -> list[int]:
        return [int(m) for m in self.mults.split(",")]

    @property
    def ae_channels(self) -> list[int]:
        """Channels of the autoencoder's log2(f) + 1 levels: ae_width x 1, 2, 4, 4, ..."""
        return [self.ae_width * min(2 ** i, 4) for i in range(int(math.log2(self.factor)) + 1)]

    @property
    def attn_resolutions(self) -> set[int]:
        return {int(r) for r in self.attn.split(",") if r.strip()}


# ---------------------------------------------------------------- noise schedule (DDPM's)

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


# ---------------------------------------------------------------- stage 1 objective

def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """L_rec per image (B,): sum over pixels of |x - x_hat| (l1) or (x - x_hat)^2 (l2)."""
    diff = (x_hat.float() - x.float()).flatten(1)
    return diff.abs().sum(1) if kind == "l1" else diff.pow(2).sum(1)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per image (B,) = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar), nats."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


@torch.no_grad()
def latent_scale(z: torch.Tensor) -> torch.Tensor:
    """s = 1 / std(z) over every element of a batch of latents (B, c, h, w): s z has unit variance."""
    return 1 / z.float().flatten().std()


@torch.no_grad()
def encode(ae: Autoencoder, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A draw z ~ q(z | x) (B, c, h, w), unscaled; the mean itself when generator is None."""
    mean, logvar = ae.encoder(x)
    if generator is None:
        return mean
    return mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator).to(mean)


@torch.no_grad()
def decode(ae: Autoencoder, z: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] from unscaled latents z."""
    return ae.decoder(z.to(next(ae.parameters()).dtype)).float().clamp(-1, 1)


@torch.no_grad()
def reconstruct(ae: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """D(mean of q(z | x)) in [-1, 1]: the deterministic reconstruction."""
    return decode(ae, encode(ae, x))


# ---------------------------------------------------------------- stage 2 objective

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


def drop_labels(y: torch.Tensor, p_uncond: float, num_classes: int) -> torch.Tensor:
    """Classifier-free guidance training: each label replaced by the null class num_classes with prob. p_uncond."""
    return torch.where(torch.rand(y.shape, device=y.device) < p_uncond, torch.full_like(y, num_classes), y)


def l_simple(net: nn.Module, sch: Schedule, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             prediction: str = "eps", y: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2 (Ho et al. Eq. 14 on latents): mean ||eps - eps_theta(z_t, t, y)||^2 (or the v target); z0 scaled."""
    # Adapted from DDPM/model.py (l_simple): the optional label y
    z_t = q_sample(sch, z0, t, noise)
    target = noise if prediction == "eps" else v_from_eps(sch, z_t, noise, t)
    return F.mse_loss(net(z_t, t, y).float(), target.float())


# ---------------------------------------------------------------- sampling

def guided_output(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                  guidance: float) -> torch.Tensor:
    """The network's output; with labels, out(null) + s_g (out(y) - out(null)) (classifier-free guidance)."""
    x_t = x_t.to(next(net.parameters()).dtype)
    if y is None or guidance == 1:
        return net(x_t, t, y).float()
    null = torch.full_like(y, net.cfg.num_classes)
    cond, uncond = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null])).float().chunk(2)
    return uncond + guidance * (cond - uncond)


def predict(net: nn.Module, sch: Schedule, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
            guidance: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from the (guided) output; not clipped (latents are unbounded)."""
    # Adapted from DDPM/model.py (predict): guidance, no clipping
    out = guided_output(net, x_t, t, y, guidance).to(x_t.dtype)
    eps = out if net.cfg.prediction == "eps" else eps_from_v(sch, x_t, out, t)
    return x0_from_eps(sch, x_t, eps, t), eps


# Copied from DDPM/model.py: q_posterior
def q_posterior(sch: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean mu~_t(x_t, x_0) and variance beta~_t of q(x_{t-1} | x_t, x_0) (Eq. 6, 7), t >= 1."""
    ab, ab_prev = sch.at(sch.alpha_bar, t, x_t), sch.at(sch.alpha_bar, t - 1, x_t)
    beta = sch.at(sch.betas, t, x_t)
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    return mean, sch.at(sch.posterior_var, t, x_t)


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
def sample_latents(net: nn.Module, n: int, steps: int = 0, eta: float = 0.0, generator: torch.Generator | None = None,
                   y: torch.Tensor | None = None, guidance: float = 1.0, x_T: torch.Tensor | None = None,
                   keep: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """n scaled latents z'_0 (n, c, h, w) and, with keep K > 0, about K snapshots of z'_t along the way.

    steps 0: ancestral over all T steps (Ho et al. Algorithm 2); S > 0: DDIM over S timesteps with `eta`.
    y (n,) labels for a class-conditional net (None: the null class), guidance s_g."""
    # Adapted from DDPM/model.py (sample): latent shape, labels and guidance, no clipping, no decoding
    cfg, sch = net.cfg, schedule_of(net.cfg)
    param = next(net.parameters())
    shape = (n, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    randn = lambda: torch.randn(shape, generator=generator, dtype=torch.float32).to(param.device)
    x = randn() if x_T is None else x_T.to(param.device, torch.float32)
    y = None if y is None or not cfg.num_classes else y.to(param.device)
    taus = list(range(cfg.timesteps, 0, -1)) if steps == 0 else ddim_timesteps(cfg.timesteps, steps)
    every, trajectory = max(len(taus) // keep, 1) if keep else 0, []
    for i, s in enumerate(taus):
        t = torch.full((n,), s, dtype=torch.long, device=param.device)
        x0_hat, eps_hat = predict(net, sch, x, t, y, guidance)
        z = randn() if (steps == 0 or eta > 0) and s > 1 else torch.zeros_like(x)
        if steps == 0:
            x = ancestral_step(sch, x, x0_hat, t, z)[0]
        else:
            t_prev = torch.full_like(t, taus[i + 1] if i + 1 < len(taus) else 0)
            x = ddim_step(sch, x0_hat, eps_hat, t, t_prev, eta, z)[0]
        if every and (i % every == 0 or i == len(taus) - 1):
            trajectory.append(x)
    return x, trajectory


@torch.no_grad()
def sample(ae: Autoencoder, net: nn.Module, n: int, steps: int = 20, eta: float = 0.0,
           generator: torch.Generator | None = None, y: torch.Tensor | None = None, guidance: float = 1.0,
           x_T: torch.Tensor | None = None) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1]: latents from the diffusion, x = D(z'_0 / s)."""
    z, _ = sample_latents(net, n, steps, eta, generator, y, guidance, x_T)
    return decode(ae, z / net.scale_factor)


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
