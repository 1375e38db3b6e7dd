"""beta-VAE: a VAE whose KL term is weighted (Higgins et al.) or held at a rising capacity (Burgess et al.).

Higgins, Matthey, Pal, Burgess, Glorot, Botvinick, Mohamed & Lerchner, "beta-VAE: Learning Basic Visual
Concepts with a Constrained Variational Framework", ICLR 2017. https://openreview.net/forum?id=Sy2fzU9gl
Burgess, Higgins, Pal, Matthey, Watters, Desjardins & Lerchner, "Understanding disentangling in beta-VAE",
2018. https://arxiv.org/abs/1804.03599
The VAE itself is Kingma & Welling, "Auto-Encoding Variational Bayes", 2013. https://arxiv.org/abs/1312.6114

Model. An encoder gives a diagonal Gaussian posterior q(z|x) = N(mu(x), diag(exp(logvar(x)))), the prior is
p(z) = N(0, I) with z in R^10, and a decoder gives p(x|z). A code is drawn by the reparameterisation trick
z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling Sec. 2.4), so gradients flow through mu, logvar.

Objectives (per image, then averaged over the batch):
    Higgins et al. Eq. 4:   L_beta = E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z))          (beta_vae_loss)
    Burgess et al. Eq. 8:   L_C    = E_q[-log p(x|z)] + gamma * |KL(q(z|x) || p(z)) - C|   (capacity_loss)
with C raised linearly from 0 to C_max over N steps and then held (capacity_schedule). beta = 1 (or gamma = 1,
C = 0) is the plain VAE's negative ELBO. beta > 1 presses the posterior towards the isotropic prior, which
favours codes whose dimensions are independent, i.e. aligned with independent factors of the data; the
capacity form instead lets the KL (the information the code carries, in nats) grow slowly, so the factor that
buys the largest reconstruction gain per nat is encoded first (in Burgess et al.'s dSprites runs: position,
then scale, then shape).

The KL of a diagonal Gaussian to N(0, I), per latent dimension j (Kingma & Welling Appendix B):
    KL_j = 1/2 (mu_j^2 + exp(logvar_j) - logvar_j - 1)                                   (kl_per_dim)
Likelihood: a Bernoulli on pixel intensities in [0, 1], i.e. the binary cross-entropy of the decoder's logits
against every channel of every pixel, summed over pixels and channels:
    -log p(x|z) = sum_i -[x_i log sigmoid(l_i) + (1 - x_i) log(1 - sigmoid(l_i))]        (bernoulli_nll)
It is what Higgins et al. and Burgess et al. used for dSprites and disentanglement_lib uses by default; for
intensities strictly between 0 and 1 it is not a normalised density (the "continuous Bernoulli" issue), so the
loss is a reconstruction cost in nats, not an NLL of the 8-bit images. We pick it over a fixed-variance
Gaussian because the Gaussian's sigma is a hidden second beta (its loss is ||x - x_hat||^2 / (2 sigma^2)), so
beta would mean something different per sigma; with the Bernoulli, beta = 4 here means what it means in the
disentanglement literature. The shapes images are near-binary per channel (saturated colours on a dark
background), where the Bernoulli fits well.

Architecture (Burgess et al. Appendix A.1, their dSprites network): encoder 4 conv layers of 32 channels,
kernel 4, stride 2, ReLU, then fc 256, fc 256, fc 2 x 10 (mu, logvar); decoder the transpose of it, ending in
logits. Here the number of stride-2 layers is log2(image_size / 4), so the last feature map is 4x4 x 32 as in
the paper: 3 layers at 32x32, the paper's 4 at `--image-size 64`.

Conventions: images in [-1, 1] (the shared data convention) are mapped to x01 = (x + 1) / 2 for the
likelihood; decoded images go back to [-1, 1]. Shapes (B, C, H, W); losses are sums over pixels / latents and
means over the batch, in nats. Latent traversals vary one dimension over [-3, 3] with the others at a test
image's posterior mean (Higgins et al. Fig. 1 and 7), dimensions ordered by their mean KL, largest first.

Deviations:
  * 32x32 images by default with 3 conv layers instead of 64x64 with 4 (same 4x4 x 32 bottleneck, same fc
    sizes and latent size); `--image-size 64` is the paper's network.
  * The capacity schedule is counted in optimizer steps of our runs (minutes on a CPU, thousands of steps),
    not Burgess et al.'s 100,000+ iterations; C_max and N are flags.
  * The KL in the capacity loss is the batch mean of the per-image KL, so |KL - C| is taken of the batch
    mean (as in Burgess et al.'s released code and disentanglement_lib), not averaged per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Config:
    image_size: int = 32  # H = W, a power of two >= 8; log2(image_size / 4) stride-2 conv layers
    channels: int = 3  # image channels (3 RGB, 1 grayscale)
    z_dim: int = 10  # latent dimension (Burgess et al.: 10)
    width: int = 32  # channels of every conv layer (Burgess et al.: 32)
    hidden: int = 256  # units of the two fully connected layers (Burgess et al.: 256)

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"BetaVAE needs --image-size a power of two >= 8, got {self.image_size}")

    @property
    def num_layers(self) -> int:
        """Stride-2 conv layers between the image and the 4x4 feature map."""
        return int(math.log2(self.image_size)) - 2


# ---------------------------------------------------------------- building blocks

def conv_stack(c_in: int, width: int, num_layers: int) -> nn.Sequential:
    """num_layers x (conv 4x4 stride 2 + ReLU): halves H and W each time."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [nn.Conv2d(c_in if i == 0 else width, width, kernel_size=4, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


def deconv_stack(width: int, c_out: int, num_layers: int) -> nn.Sequential:
    """num_layers x transposed conv 4x4 stride 2 (doubles H and W), ReLU between, none after the last."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        last = i == num_layers - 1
        layers.append(nn.ConvTranspose2d(width, c_out if last else width, kernel_size=4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- networks

class Encoder(nn.Module):
    """q(z|x): image (B, C, H, W) in [-1, 1] -> (mu, logvar), each (B, z_dim)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.convs = conv_stack(cfg.channels, cfg.width, cfg.num_layers)
        self.fc = nn.Sequential(nn.Linear(cfg.width * 16, cfg.hidden), nn.ReLU(),
                                nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                                nn.Linear(cfg.hidden, 2 * cfg.z_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.convs(x).flatten(1)  # (B, width, 4, 4) -> (B, 16 width)
        mu, logvar = self.fc(h).chunk(2, dim=1)  # (B, 2 z_dim) -> 2 x (B, z_dim)
        return mu, logvar


class Decoder(nn.Module):
    """p(x|z): code (B, z_dim) -> Bernoulli logits (B, C, H, W) of the intensities in [0, 1]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.width = cfg.width
        self.fc = nn.Sequential(nn.Linear(cfg.z_dim, cfg.hidden), nn.ReLU(),
                                nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                                nn.Linear(cfg.hidden, cfg.width * 16), nn.ReLU())
        self.deconvs = deconv_stack(cfg.width, cfg.channels, cfg.num_layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.width, 4, 4)  # (B, 16 width) -> (B, width, 4, 4)
        return self.deconvs(h)


class BetaVAE(nn.Module):
    """Encoder + decoder. forward(x) -> (logits, mu, logvar) with one reparameterised code per image."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        return self.decoder(reparameterize(mu, logvar)), mu, logvar


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I), sigma = exp(logvar / 2) (Kingma & Welling Eq. 10's sampling)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


# ---------------------------------------------------------------- objective

def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> intensities in [0, 1], the Bernoulli's targets."""
    return (x + 1) / 2


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image (B,): binary cross-entropy of logits vs intensities (x in [-1, 1]), summed."""
    return F.binary_cross_entropy_with_logits(logits.float(), to_unit(x).float(), reduction="none").flatten(1).sum(1)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per image and dimension (B, z_dim): 1/2 (mu^2 + e^logvar - logvar - 1)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)


def beta_vae_loss(recon: torch.Tensor, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """Higgins et al. Eq. 4: mean over the batch of -log p(x|z) + beta * KL; recon, kl per image (B,)."""
    return (recon + beta * kl).mean()


def capacity_schedule(step: int, capacity_max: float, capacity_steps: int) -> float:
    """Burgess et al. Sec. 5: C rises linearly from 0 at step 0 to C_max at step N, then stays at C_max (nats)."""
    if capacity_steps <= 0:
        return capacity_max
    return capacity_max * min(1.0, max(step, 0) / capacity_steps)


def capacity_loss(recon: torch.Tensor, kl: torch.Tensor, gamma: float, capacity: float) -> torch.Tensor:
    """Burgess et al. Eq. 8: E[-log p(x|z)] + gamma * |E[KL] - C|, with the batch means of recon, kl (B,)."""
    return recon.mean() + gamma * (kl.mean() - capacity).abs()


# ---------------------------------------------------------------- sampling and traversals

@torch.no_grad()
def decode(vae: BetaVAE, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Codes (n, z_dim) -> the decoder's mean images (n, C, H, W) in [-1, 1] (sigmoid of the logits)."""
    device = next(vae.parameters()).device
    return torch.cat([torch.sigmoid(vae.decoder(c.to(device))) * 2 - 1 for c in z.split(batch_size)])


@torch.no_grad()
def sample(vae: BetaVAE, n: int, z: torch.Tensor | None = None, rng: torch.Generator | None = None) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1] decoded from z ~ p(z) = N(0, I) (or the given z, (n, z_dim))."""
    if z is None:
        z = torch.randn(n, vae.cfg.z_dim, generator=rng)
    return decode(vae, z)


@torch.no_grad()
def encode(vae: BetaVAE, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, C, H, W) in [-1, 1] -> the posterior's (mu, logvar), each (n, z_dim)."""
    device = next(vae.parameters()).device
    parts = [vae.encoder(chunk.to(device)) for chunk in x.split(batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def reconstruct(vae: BetaVAE, x: torch.Tensor) -> torch.Tensor:
    """Images -> decoded posterior means, both (n, C, H, W) in [-1, 1] (deterministic: no sampled noise)."""
    return decode(vae, encode(vae, x)[0])


def traversal_codes(z_base: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """Codes (len(dims) * len(values), z_dim): row r holds z_base with dimension dims[r] set to each value."""
    codes = z_base.expand(len(dims), len(values), z_base.shape[-1]).clone()  # (rows, steps, z_dim)
    for r, d in enumerate(dims):
        codes[r, :, d] = values
    return codes.flatten(0, 1)


def dims_by_kl(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Latent dimensions ordered by their mean KL over the given posteriors, largest first; and that KL (z_dim,)."""
    kl = kl_per_dim(mu, logvar).mean(0)
    return kl.argsort(descending=True).tolist(), kl


@torch.no_grad()
def traverse(vae: BetaVAE, x: torch.Tensor, steps: int = 10, limit: float = 3.0,
             kl_images: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Latent traversals of the images x (n, C, H, W): (n, z_dim, steps, C, H, W) images in [-1, 1], where
    [i, r, s] decodes x[i]'s posterior mean with dimension order[r] set to the s-th value of linspace(-limit,
    limit, steps). Rows ordered by mean KL over kl_images (default x), largest first; returns (images, order, kl)."""
    mu, logvar = encode(vae, x if kl_images is None else kl_images)
    order, kl = dims_by_kl(mu, logvar)
    z_base = encode(vae, x)[0] if kl_images is not None else mu  # (n, z_dim)
    values = torch.linspace(-limit, limit, steps, device=z_base.device)
    images = torch.stack([decode(vae, traversal_codes(z, order, values)) for z in z_base])  # (n, D * steps, ...)
    return images.view(len(x), len(order), steps, *images.shape[2:]), order, kl
