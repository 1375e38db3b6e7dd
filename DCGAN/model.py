"""DCGAN: Deep Convolutional Generative Adversarial Networks.

Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks", ICLR 2016. https://arxiv.org/abs/1511.06434
The objective is the GAN game of Goodfellow et al. 2014 (https://arxiv.org/abs/1406.2661).

Objective (Goodfellow et al. Eq. 1), D outputs a logit l = D(x), sigma = logistic sigmoid:
    min_G max_D  E_x[log sigma(D(x))] + E_z[log(1 - sigma(D(G(z))))]
The discriminator minimises the binary cross-entropy with real = 1, fake = 0:
    L_D = -log sigma(D(x)) - log(1 - sigma(D(G(z))))                     (discriminator_loss)
The generator uses the non-saturating loss of Goodfellow et al. Sec. 3 (what DCGAN trained with):
    L_G = -log sigma(D(G(z)))                                              (generator_loss)
At the start D(G(z)) ~ 0, where log(1 - sigma) saturates but -log sigma still has a strong gradient.

Optional (train.py --r1 GAMMA, off by default): the R1 gradient penalty on real images of Mescheder, Geiger &
Nowozin, "Which Training Methods for GANs do actually Converge?", ICML 2018 (https://arxiv.org/abs/1801.04406),
added to L_D:
    L_R1 = gamma/2 * E_x ||grad_x D(x)||^2                                 (r1_penalty)
It keeps D flat on the data, so the game can settle where G matches the data instead of circling around that
point (the paper's convergence result). Lazy R1 (Karras et al. 2020, StyleGAN2's "lazy regularization"): add
K * L_R1 on every K-th D step only (train.py --r1-every K), the same penalty on average at a K-th of its cost.

Architecture guidelines (DCGAN Sec. 3), all followed here:
  * no pooling: strided convolutions in D, fractional-strided (transposed) convolutions in G;
  * BatchNorm in both, except the G output layer and the D input layer;
  * no fully connected hidden layers: z (z_dim x 1 x 1) -> 4x4 by a transposed conv, the last D conv
    maps 4x4 -> 1x1 logit;
  * ReLU in G (Tanh at the output), LeakyReLU(0.2) in D;
  * weights ~ N(0, 0.02), Adam(lr 2e-4, beta1 0.5).
The network is sized from image_size: one stride-2 layer per doubling from 4x4, channels halving towards the
image (G) and doubling away from it (D). image_size 64 with widths 64 is the paper's LSUN/Imagenet model.

Conventions: images in [-1, 1], shape (B, C, H, W); losses are means over the batch.

Deviations:
  * z ~ N(0, I) instead of the paper's U[-1, 1] (the common choice since; interpolation also assumes it).
  * D returns a logit and the losses use the log-sigmoid form (BCE-with-logits): the same function as
    sigmoid + BCE, numerically stable.
  * Latent walks use spherical interpolation (slerp) instead of the paper's linear interpolation.
  * The R1 penalty is not part of DCGAN. With D's BatchNorm in training mode a logit depends on the whole batch,
    so r1_penalty takes the gradient of the batch's summed logits (the usual implementation), not of each D(x)
    alone (StyleGAN2's discriminator, for one, has no normalisation layers).
  * train.py defaults to 32x32 images and widths 32 (the paper's 64x64 model has widths 64 and one more layer:
    `--image-size 64 --g-width 64 --d-width 64`), so a 2-core CPU trains it in minutes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Config:
    image_size: int = 32  # H = W, a power of two >= 16
    channels: int = 3  # image channels (3 RGB, 1 grayscale)
    z_dim: int = 100  # latent dimension
    g_width: int = 64  # G's channels just before the output layer (paper's ngf)
    d_width: int = 64  # D's channels after the input layer (paper's ndf)

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ValueError(f"DCGAN needs --image-size a power of two >= 16, got {self.image_size}")

    @property
    def num_layers(self) -> int:
        """Stride-2 layers between 4x4 and image_size."""
        return int(math.log2(self.image_size)) - 2


# ---------------------------------------------------------------- building blocks

def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Transposed conv doubling H and W, then BatchNorm and ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def down_block(c_in: int, c_out: int, batchnorm: bool = True) -> nn.Sequential:
    """Strided conv halving H and W, then (BatchNorm and) LeakyReLU(0.2)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """DCGAN Sec. 4: conv weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, mean=1.0, std=0.02)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- networks

class Generator(nn.Module):
    """G: z (B, z_dim) -> image (B, C, H, W) in [-1, 1]."""

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


class Discriminator(nn.Module):
    """D: image (B, C, H, W) -> logit (B,), large for images it believes are real."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.d_width * 2 ** i for i in range(cfg.num_layers)]  # e.g. [64, 128, 256] at 32x32
        blocks = [down_block(cfg.channels, widths[0], batchnorm=False)]  # no BN on the input layer
        blocks += [down_block(a, b) for a, b in zip(widths[:-1], widths[1:])]
        self.body = nn.Sequential(*blocks)
        self.to_logit = nn.Conv2d(widths[-1], 1, kernel_size=4, stride=1, padding=0, bias=False)  # 4x4 -> 1x1
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_logit(self.body(x)).flatten()  # (B, 1, 1, 1) -> (B,)


# ---------------------------------------------------------------- objective

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = -E[log sigma(D(x))] - E[log(1 - sigma(D(G(z))))]; note log(1 - sigma(l)) = log sigma(-l)."""
    return -(F.logsigmoid(real_logits.float()).mean() + F.logsigmoid(-fake_logits.float()).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating L_G = -E[log sigma(D(G(z)))] (Goodfellow et al. 2014, Sec. 3)."""
    return -F.logsigmoid(fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): L_R1 = gamma/2 * E_x ||grad_x D(x)||^2 over real images x, with D(x) the logit.

    real: (B, C, H, W) with requires_grad set before D saw it; real_logits: D(real), (B,). The gradient is taken
    with create_graph=True, so backpropagating L_R1 reaches D's parameters (a double backward).
    """
    grad, = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)  # (B, C, H, W)
    return gamma / 2 * grad.float().pow(2).flatten(1).sum(1).mean()


# ---------------------------------------------------------------- sampling

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

    Gaussian latents concentrate near a sphere of radius sqrt(D); a straight line between two of them passes
    through the low-norm interior that G never saw, so the paper's linear walk is replaced by slerp.
    """
    omega = torch.acos((F.normalize(z0, dim=0) * F.normalize(z1, dim=0)).sum().clamp(-1, 1))
    t = t[:, None]
    if omega.abs() < 1e-6:
        return (1 - t) * z0 + t * z1
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


@torch.no_grad()
def interpolate(generator: Generator, z0: torch.Tensor, z1: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Images along the latent path from z0 to z1: (steps, C, H, W) (DCGAN Sec. 6.1, walking the latent space)."""
    return sample(generator, steps, z=slerp(z0, z1, torch.linspace(0, 1, steps)))
