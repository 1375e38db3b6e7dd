"""WGAN: Wasserstein GAN, with weight clipping (the original) or a gradient penalty (WGAN-GP).

Arjovsky, Chintala & Bottou, "Wasserstein Generative Adversarial Networks", ICML 2017.
https://arxiv.org/abs/1701.07875
Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of Wasserstein GANs", NeurIPS 2017.
https://arxiv.org/abs/1704.00028

The critic f (no sigmoid: a real-valued score) estimates the Wasserstein-1 distance through the
Kantorovich-Rubinstein duality (Arjovsky et al. Eq. 2; Eq. 3 with a parameterised critic):
    W(P_r, P_g) = sup_{||f||_L <= 1}  E_{x~P_r}[f(x)] - E_{x~P_g}[f(x)]              (wasserstein_estimate)
The critic ascends this estimate and G descends it; only the -E[f(G(z))] term depends on G:
    L_critic = E_z[f(G(z))] - E_x[f(x)]            (critic_loss; minimised, Algorithm 1 lines 5-6)
    L_G      = -E_z[f(G(z))]                       (generator_loss; minimised, Algorithm 1 line 10-11)
The two variants keep f (roughly) 1-Lipschitz differently:
  * clip (Arjovsky et al. Algorithm 1): after every critic update, every critic parameter w <- clip(w, -c, c)
    (clip_weights), c = 0.01; RMSprop, lr 5e-5; n_critic = 5 critic updates per generator update.
  * gp (Gulrajani et al. Eq. 3, Algorithm 1): the critic loss gains a two-sided gradient penalty on random
    interpolates x_hat = alpha x + (1 - alpha) G(z), alpha ~ U[0, 1] drawn per sample:
        L_critic = E[f(G(z))] - E[f(x)] + lambda E_{x_hat}[(||grad_x_hat f(x_hat)||_2 - 1)^2]   (Eq. 3)
    (gradient_penalty), lambda = 10; Adam(lr 1e-4, beta1 0, beta2 0.9); n_critic = 5. The penalty is per
    sample, so the critic must not use BatchNorm (Sec. 4): here it uses none (the default, as the authors'
    DCGAN-architecture code) or layer normalisation (GroupNorm with one group: per sample over (C, H, W), one
    scale and shift per channel, as the authors' layer norm).
Both use the DCGAN architecture (Radford et al. 2016) for G and for f, as both papers' image experiments did:
transposed convolutions with BatchNorm + ReLU in G (Tanh out), strided convolutions + LeakyReLU(0.2) in f,
one stride-2 layer per doubling from 4x4, weights ~ N(0, 0.02). The critic's normalisation is a choice
(`critic_norm`): batch (the WGAN paper's DCGAN critic, clip only), layer or none.

Conventions: images in [-1, 1], shape (B, C, H, W); z ~ N(0, I); losses are means over the batch; the
critic returns (B,) scores; "larger" means "more real".

Deviations:
  * Layer normalisation in the GP critic is GroupNorm(1, C), i.e. the authors' per-channel-affine layer norm,
    not torch's nn.LayerNorm (which would learn a scale per pixel).
  * The original WGAN code (not the paper) runs 100 critic updates for the first 25 generator updates and every
    500th; Algorithm 1, implemented here, uses n_critic throughout.
  * train.py's WGAN-GP learning rates are 3e-4 for G and 6e-4 for the critic, not the paper's 1e-4 for both
    (`--lr 1e-4`), and its n_critic is 1, not the paper's 5 (`--n-critic 5`): a critic at twice G's rate (Heusel
    et al.'s two time-scale rule) stays ahead of G with one update per generator update, so a short CPU run makes
    about five times the generator updates (the measured figures are in the README and EXPERIMENTS.md). Betas
    (0, 0.9) and lambda 10 are the paper's; --variant clip keeps the WGAN paper's one rate and n_critic 5.
  * train.py defaults to 32x32 images and widths 32 so a 2-core CPU trains it in minutes (see README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("gp", "clip")
CRITIC_NORMS = ("batch", "layer", "none")


@dataclass
class Config:
    image_size: int = 32  # H = W, a power of two >= 16
    channels: int = 3  # image channels (3 RGB, 1 grayscale)
    z_dim: int = 100  # latent dimension
    g_width: int = 64  # G's channels just before the output layer (DCGAN's ngf)
    d_width: int = 64  # the critic's channels after the input layer (DCGAN's ndf)
    critic_norm: str = "none"  # normalisation in the critic's hidden layers: batch (clip only) | layer | none

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ValueError(f"WGAN needs --image-size a power of two >= 16, got {self.image_size}")
        if self.critic_norm not in CRITIC_NORMS:
            raise ValueError(f"--critic-norm must be one of {', '.join(CRITIC_NORMS)}, got {self.critic_norm!r}")

    @property
    def num_layers(self) -> int:
        """Stride-2 layers between 4x4 and image_size."""
        return int(math.log2(self.image_size)) - 2


# ---------------------------------------------------------------- building blocks

# Adapted from DCGAN/model.py (blocks, init, Generator, slerp, interpolate): the critic's normalisation is a choice.
def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Transposed conv doubling H and W, then BatchNorm and ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def norm_layer(kind: str, c: int) -> nn.Module | None:
    """The critic's normalisation: BatchNorm (couples the batch), per-sample layer norm, or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "layer":
        return nn.GroupNorm(num_groups=1, num_channels=c)  # per sample over (C, H, W), affine per channel
    return None


def down_block(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    """Strided conv halving H and W, then (normalisation and) LeakyReLU(0.2)."""
    layer = norm_layer(norm, c_out)
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=layer is None)]
    if layer is not None:
        layers.append(layer)
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """DCGAN Sec. 4: conv weights ~ N(0, 0.02), biases 0; normalisation scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, mean=1.0, std=0.02)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- networks

class Generator(nn.Module):
    """G: z (B, z_dim) -> image (B, C, H, W) in [-1, 1] (the DCGAN generator)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.g_width * 2 ** i for i in reversed(range(cfg.num_layers))]  # e.g. [256, 128, 64] at 32x32
        self.project = nn.Sequential(  # (B, z_dim, 1, 1) -> (B, widths[0], 4, 4)
            nn.ConvTranspose2d(cfg.z_dim, widths[0], kernel_size=4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.body = nn.Sequential(*[up_block(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.to_image = nn.ConvTranspose2d(widths[-1], cfg.channels, kernel_size=4, stride=2, padding=1, bias=False)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z.view(z.shape[0], -1, 1, 1))  # (B, z_dim, 1, 1) -> (B, 8g, 4, 4)
        return torch.tanh(self.to_image(self.body(h)))


class Critic(nn.Module):
    """f: image (B, C, H, W) -> score (B,), unbounded (no sigmoid), larger for images it rates as real."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.d_width * 2 ** i for i in range(cfg.num_layers)]  # e.g. [64, 128, 256] at 32x32
        blocks = [down_block(cfg.channels, widths[0], norm="none")]  # no normalisation on the input layer
        blocks += [down_block(a, b, cfg.critic_norm) for a, b in zip(widths[:-1], widths[1:])]
        self.body = nn.Sequential(*blocks)
        self.to_score = nn.Conv2d(widths[-1], 1, kernel_size=4, stride=1, padding=0, bias=False)  # 4x4 -> 1x1
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_score(self.body(x)).flatten()  # (B, 1, 1, 1) -> (B,)


# ---------------------------------------------------------------- objective

def wasserstein_estimate(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E_x[f(x)] - E_z[f(G(z))]: the critic's estimate of W(P_r, P_g) (Arjovsky et al. Eq. 2), up to the
    Lipschitz constant. It should fall as the samples improve."""
    return real_scores.float().mean() - fake_scores.float().mean()


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """L_critic = E[f(G(z))] - E[f(x)]: descending it ascends the Wasserstein estimate (Algorithm 1)."""
    return -wasserstein_estimate(real_scores, fake_scores)


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """L_G = -E[f(G(z))]: descending it raises the critic's score of the samples (Algorithm 1)."""
    return -fake_scores.float().mean()


def random_interpolates(real: torch.Tensor, fake: torch.Tensor,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_hat = alpha x + (1 - alpha) x_tilde with one alpha ~ U[0, 1] per sample (Gulrajani et al. Algorithm 1,
    line 6); returns x_hat (B, C, H, W) and alpha (B, 1, 1, 1). alpha comes from `generator` if given (on its
    device), else from the global RNG."""
    shape = (real.shape[0], *[1] * (real.dim() - 1))  # (B, 1, 1, 1)
    alpha = torch.rand(shape, generator=generator, device=generator.device if generator else real.device,
                       dtype=real.dtype).to(real.device)
    return torch.lerp(fake, real, alpha), alpha  # fake + alpha (real - fake)


def critic_gradient_norm(critic: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """||grad_x f(x)||_2 per sample, (B,). Without BatchNorm the scores of different samples don't interact, so
    the gradient of their sum holds each sample's own gradient; with BatchNorm (clip variant, logged only) the
    norms include the coupling through the batch statistics."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).float().sum(), x, create_graph=create_graph)
    return grad.float().flatten(1).norm(2, dim=1)  # (B, C, H, W) -> (B,)


def gradient_penalty(critic: nn.Module, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E_{x_hat}[(||grad_x_hat f(x_hat)||_2 - 1)^2] (Gulrajani et al. Eq. 3, without lambda) and the per-sample
    gradient norms (B,). The graph is kept (create_graph) so the penalty trains the critic's weights."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules()):
        raise ValueError("the gradient penalty is per sample: the critic must not use BatchNorm (Gulrajani Sec. 4)")
    grad_norm = critic_gradient_norm(critic, x_hat, create_graph=True)
    return ((grad_norm - 1) ** 2).mean(), grad_norm


@torch.no_grad()
def clip_weights(critic: nn.Module, c: float) -> None:
    """w <- clip(w, -c, c) for every critic parameter (Arjovsky et al. Algorithm 1, line 7), in place."""
    for p in critic.parameters():
        p.clamp_(-c, c)


# ---------------------------------------------------------------- sampling

# Copied from DCGAN/model.py: sample
@torch.no_grad()
def sample(generator: Generator, n: int, z: torch.Tensor | None = None,
           rng: torch.Generator | None = None, batch_size: int = 256) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1] from z ~ N(0, I) (or the given z of shape (n, z_dim))."""
    device = next(generator.parameters()).device
    if z is None:
        z = torch.randn(n, generator.cfg.z_dim, generator=rng).to(device)
    return torch.cat([generator(chunk.to(device)) for chunk in z.split(batch_size)])


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) between latents (D,) for t in [0, 1] -> (len(t), D).

    Gaussian latents concentrate near a sphere of radius sqrt(D); slerp stays on it, a straight line does not.
    """
    omega = torch.acos((F.normalize(z0, dim=0) * F.normalize(z1, dim=0)).sum().clamp(-1, 1))
    t = t[:, None]
    if omega.abs() < 1e-6:
        return (1 - t) * z0 + t * z1
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


@torch.no_grad()
def interpolate(generator: Generator, z0: torch.Tensor, z1: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Images along the latent path from z0 to z1: (steps, C, H, W)."""
    return sample(generator, steps, z=slerp(z0, z1, torch.linspace(0, 1, steps)))
