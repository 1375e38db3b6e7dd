"""BiGAN: Bidirectional Generative Adversarial Networks (with ALI, the same model found independently).

Donahue, Kraehenbuehl & Darrell, "Adversarial Feature Learning", ICLR 2017. https://arxiv.org/abs/1605.09782
Dumoulin, Belghazi, Poole, Mastropietro, Lamb, Arjovsky & Courville, "Adversarially Learned Inference",
ICLR 2017. https://arxiv.org/abs/1606.00704

A GAN learns G: z -> x but no way back. BiGAN adds an encoder E: x -> z and lets the discriminator judge
*pairs*: real images with their codes (x, E(x)), x ~ p_X, against generated images with theirs (G(z), z),
z ~ p_Z. D outputs a logit l = D(x, z), sigma = logistic sigmoid. The game (BiGAN Eq. 3):
    min_{G,E} max_D  V(D, E, G) = E_x[log sigma(D(x, E(x)))] + E_z[log(1 - sigma(D(G(z), z)))]   (value)
The discriminator minimises -V: binary cross-entropy with real pair = 1, fake pair = 0  (discriminator_loss).
E and G use the non-saturating form with the labels swapped (BiGAN Sec. 3.4; ALI trains the same way):
    L_EG = -log sigma(D(G(z), z)) - log(1 - sigma(D(x, E(x))))                          (encoder_generator_loss)
Both E and G get their gradient only through D: E through the z slot of the real pair, G through the x slot
of the fake pair. Neither ever sees a pixel loss.

Why the optimum inverts G (BiGAN Theorem 2). For the optimal D, V = 2 JSD(P_EX || P_GZ) - log 4 (Props. 1-2),
where P_EX is the joint law of (x, E(x)) and P_GZ that of (G(z), z). So the global optimum is P_EX = P_GZ.
With deterministic E and G, P_EX lives on the graph {(x, E(x))} and P_GZ on the graph {(G(z), z)}; equal joint
laws put (almost) every point of one graph on the other, so a pair (x, E(x)) is also (G(z), z) with z = E(x),
i.e. G(E(x)) = x for P_X-almost every x and E(G(z)) = z for P_Z-almost every z: E = G^-1. (Theorem 3 adds
that the optimum is that of an autoencoder with an l0 reconstruction loss, in both directions.) Nothing in
training forces this pointwise: it only holds at the optimum, so reconstructions of a finite-time model are
judged by D's features (class, colour, pose), often "semantic" rather than pixel-exact.

Deterministic vs stochastic encoder. ALI uses a Gaussian encoder q(z|x) = N(mu(x), diag sigma^2(x)) sampled
by reparameterisation, z = mu + sigma * eps, eps ~ N(0, I), so gradients reach mu and sigma. Its optimum is
q(x, z) = p(x, z): q(z|x) equals G's posterior, which need not be a point, so the inversion above holds only
in distribution. This implementation defaults to BiGAN's deterministic E (`encoder="deterministic"`): it is
the one Theorem 2 is about, and it gives the single code a linear probe and G(E(x)) need.
`encoder="gaussian"` is ALI's encoder; features and reconstructions then use mu(x).

Networks (DCGAN-style, sized from image_size with one stride-2 layer per doubling from 4x4):
  * G: the DCGAN generator (transposed convs, BatchNorm, ReLU, Tanh).
  * E: a DCGAN-discriminator-shaped conv net (strided convs, BatchNorm except the first, LeakyReLU 0.2)
    ending in a linear map to z_dim (or 2 z_dim: mu and log sigma).
  * D(x, z) sees x and z jointly (ALI's D(x), D(z), D(x, z) split): conv features of x -> a d_joint vector,
    a 2-layer MLP embedding of z -> a d_joint vector, concatenated into a 2-layer MLP head -> one logit, so it
    can learn which code belongs to which image. Real and fake pairs go through D as one batch (judge_pairs,
    as in ALI's code). D uses spectral normalisation (Miyato et al. 2018) on every layer and ALI's dropout
    (0.2) on every hidden layer, and no BatchNorm (d_norm="spectral"); the README says why.

Conventions: images in [-1, 1], shape (B, C, H, W); codes (B, z_dim); losses are means over the batch;
z ~ N(0, I).

Deviations:
  * z ~ N(0, I) (ALI) instead of BiGAN's U[-1, 1]; E's output is unbounded. Default z_dim 16 (BiGAN: 50 on
    MNIST, 200 on ImageNet; ALI: 64-256), a tuned choice (README).
  * Spectral norm in D (in neither paper) instead of BatchNorm (ALI's D(x)); d_norm="batch" is ALI's choice.
  * Dropout in D's conv layers drops whole channels (Dropout2d: a (B, C) mask), in its MLP layers single
    units. ALI drops units everywhere; per-activation masks on the conv maps are slow on CPU (README).
  * Convolutional DCGAN-style networks at 32x32 for every dataset (BiGAN's MNIST model is an MLP, its
    ImageNet E an AlexNet). 4x4 "valid" convolutions on 4x4 maps are written as flatten + linear (the same
    function, faster on CPU); D's head is an MLP on the joint vector (ALI uses 1x1 convs, the same thing).
  * Losses on logits (log-sigmoid form): the same function as sigmoid + BCE, numerically stable.
  * D learns twice as fast as E and G by default (train.py --lr-d 4e-4 against --lr 2e-4, the two time-scale
    update rule of Heusel et al. 2017; both papers use one rate), a tuned default whose measured effect is in
    the README. The game is unchanged, only how fast each player moves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

ENCODERS = ("deterministic", "gaussian")
D_NORMS = ("spectral", "batch", "none")


@dataclass
class Config:
    image_size: int = 32  # H = W, a power of two >= 16
    channels: int = 3  # image channels (3 RGB, 1 grayscale)
    z_dim: int = 16  # latent dimension (BiGAN: 50 on MNIST; tuned, see README)
    g_width: int = 32  # G's channels just before the output layer
    e_width: int = 32  # E's channels after its input layer
    d_width: int = 32  # channels of D's first conv layer (x path)
    d_joint: int = 256  # width of D's z embedding, x feature vector and joint head
    dropout: float = 0.2  # dropout in every hidden layer of D (ALI: 0.2)
    encoder: str = "deterministic"  # deterministic (BiGAN) | gaussian (ALI, reparameterised)
    d_norm: str = "spectral"  # D's normalisation: spectral | batch (ALI's D(x) path) | none

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ValueError(f"BiGAN needs --image-size a power of two >= 16, got {self.image_size}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"--encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.d_norm not in D_NORMS:
            raise ValueError(f"--d-norm must be one of {', '.join(D_NORMS)}, got {self.d_norm!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_layers(self) -> int:
        """Stride-2 layers between 4x4 and image_size."""
        return int(math.log2(self.image_size)) - 2


# ---------------------------------------------------------------- building blocks

# Adapted from DCGAN/model.py (up_block, down_block, init_weights): down_block gains a choice of
# normalisation and dropout; init_weights also covers linear and spectrally normalised layers.
def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Transposed conv doubling H and W, then BatchNorm and ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def down_block(c_in: int, c_out: int, norm: str = "batch", dropout: float = 0.0) -> nn.Sequential:
    """Strided conv halving H and W, normalised (batch | spectral | none), LeakyReLU(0.2), then dropout."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=norm != "batch")
    layers: list[nn.Module] = [spectral_norm(conv) if norm == "spectral" else conv]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    if dropout:
        layers.append(nn.Dropout2d(dropout))  # drops whole channels: a (B, C) mask, see Deviations
    return nn.Sequential(*layers)


def linear(d_in: int, d_out: int, norm: str) -> nn.Module:
    """A linear layer, spectrally normalised if norm == "spectral" (BatchNorm is only used in D's x path)."""
    layer = nn.Linear(d_in, d_out)
    return spectral_norm(layer) if norm == "spectral" else layer


def mlp_layer(d_in: int, d_out: int, norm: str, dropout: float) -> nn.Sequential:
    """Linear, LeakyReLU(0.2), dropout: one hidden layer of D's z path and joint head."""
    return nn.Sequential(linear(d_in, d_out, norm), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout))


def init_weights(module: nn.Module) -> None:
    """DCGAN Sec. 4: conv and linear weights ~ N(0, 0.02), biases 0; BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        # a spectrally normalised layer computes .weight from .parametrizations.weight.original: init that
        weight = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") \
            else module.weight
        nn.init.normal_(weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, mean=1.0, std=0.02)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- networks

# Adapted from DCGAN/model.py (Generator): unchanged apart from the Config it reads.
class Generator(nn.Module):
    """G: z (B, z_dim) -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.g_width * 2 ** i for i in reversed(range(cfg.num_layers))]  # e.g. [128, 64, 32] at 32x32
        self.project = nn.Sequential(  # (B, z_dim, 1, 1) -> (B, widths[0], 4, 4)
            nn.ConvTranspose2d(cfg.z_dim, widths[0], kernel_size=4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.body = nn.Sequential(*[up_block(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.to_image = nn.ConvTranspose2d(widths[-1], cfg.channels, kernel_size=4, stride=2, padding=1, bias=False)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z.view(z.shape[0], -1, 1, 1))  # (B, z_dim) -> (B, 4g, 4, 4)
        return torch.tanh(self.to_image(self.body(h)))


class Encoder(nn.Module):
    """E: image (B, C, H, W) -> code (B, z_dim); deterministic, or a reparameterised Gaussian sample (ALI)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.e_width * 2 ** i for i in range(cfg.num_layers)]  # e.g. [32, 64, 128] at 32x32
        blocks = [down_block(cfg.channels, widths[0], norm="none")]
        blocks += [down_block(a, b) for a, b in zip(widths[:-1], widths[1:])]
        self.body = nn.Sequential(*blocks)
        out = cfg.z_dim * (2 if cfg.encoder == "gaussian" else 1)
        self.to_code = nn.Linear(widths[-1] * 4 * 4, out)  # = a 4x4 conv on the 4x4 map, faster on CPU
        self.apply(init_weights)

    def distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu, log_sigma), each (B, z_dim); log_sigma is None for the deterministic encoder."""
        h = self.to_code(self.body(x).flatten(1))  # (B, w, 4, 4) -> (B, 16 w) -> (B, out)
        if self.cfg.encoder == "deterministic":
            return h, None
        mu, log_sigma = h.chunk(2, dim=1)
        return mu, log_sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self.distribution(x)
        return mu if log_sigma is None else reparameterise(mu, log_sigma)


class Discriminator(nn.Module):
    """D(x, z): image (B, C, H, W) and code (B, z_dim) -> logit (B,), large for pairs it believes are (x, E(x))."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        p, j, norm = cfg.dropout, cfg.d_joint, cfg.d_norm
        plain = "spectral" if norm == "spectral" else "none"  # no BatchNorm on the input layer and the MLPs
        widths = [cfg.d_width * 2 ** i for i in range(cfg.num_layers)]
        blocks = [down_block(cfg.channels, widths[0], norm=plain, dropout=p)]
        blocks += [down_block(a, b, norm=norm, dropout=p) for a, b in zip(widths[:-1], widths[1:])]
        self.x_path = nn.Sequential(*blocks, nn.Flatten(),  # (B, w, 4, 4) -> (B, 16 w)
                                    mlp_layer(widths[-1] * 4 * 4, j, plain, p))
        self.z_path = nn.Sequential(mlp_layer(cfg.z_dim, j, plain, p), mlp_layer(j, j, plain, p))
        self.joint = nn.Sequential(mlp_layer(2 * j, 2 * j, plain, p), linear(2 * j, 1, plain))
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.x_path(x), self.z_path(z.flatten(1))], dim=1)  # (B, 2 d_joint)
        return self.joint(h).flatten()  # (B, 1) -> (B,)


def judge_pairs(D: nn.Module, x: torch.Tensor, z_enc: torch.Tensor, x_gen: torch.Tensor,
                z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B,), (B,) of the real pairs (x, E(x)) and the fake pairs (G(z), z), judged in one batch as ALI does."""
    logits = D(torch.cat([x, x_gen]), torch.cat([z_enc, z]))  # (2B,)
    return logits[: len(x)], logits[len(x):]


# ---------------------------------------------------------------- objective

def reparameterise(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """ALI's encoder sample z = mu + sigma * eps, eps ~ N(0, I): differentiable in mu and sigma."""
    return mu + log_sigma.exp() * torch.randn_like(mu)


def value(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """V(D, E, G) of BiGAN Eq. 3 on a batch: mean log sigma(D(x, E(x))) + mean log(1 - sigma(D(G(z), z)))."""
    return F.logsigmoid(real_logits.float()).mean() + F.logsigmoid(-fake_logits.float()).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = -V: BCE with the real pair (x, E(x)) labelled 1 and the fake pair (G(z), z) labelled 0."""
    return -value(real_logits, fake_logits)


def encoder_generator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating L_EG = -E[log sigma(D(G(z), z))] - E[log(1 - sigma(D(x, E(x))))]: D's BCE, labels swapped.

    Same fixed point as min V; at the start, where D is confident, its gradient does not vanish.
    """
    return -(F.logsigmoid(fake_logits.float()).mean() + F.logsigmoid(-real_logits.float()).mean())


# ---------------------------------------------------------------- sampling, encoding, reconstruction

def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def sample(generator: Generator, n: int, z: torch.Tensor | None = None,
           rng: torch.Generator | None = None, batch_size: int = 256) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1] from z ~ N(0, I) (or the given z of shape (n, z_dim))."""
    device = _device(generator)
    if z is None:
        z = torch.randn(n, generator.cfg.z_dim, generator=rng).to(device)
    return torch.cat([generator(chunk.to(device)) for chunk in z.split(batch_size)])


@torch.no_grad()
def encode(encoder: Encoder, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Codes (n, z_dim) of images x (n, C, H, W): E(x), or the mean mu(x) of ALI's Gaussian encoder."""
    device = _device(encoder)
    return torch.cat([encoder.distribution(chunk.to(device))[0] for chunk in x.split(batch_size)])


@torch.no_grad()
def reconstruct(generator: Generator, encoder: Encoder, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """G(E(x)) (n, C, H, W): at BiGAN's optimum equal to x (Theorem 2); in practice a semantic likeness."""
    return sample(generator, len(x), z=encode(encoder, x, batch_size), batch_size=batch_size)


# Adapted from DCGAN/model.py (slerp, interpolate): unchanged.
def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) between latents (D,) for t in [0, 1] -> (len(t), D)."""
    omega = torch.acos((F.normalize(z0, dim=0) * F.normalize(z1, dim=0)).sum().clamp(-1, 1))
    t = t[:, None]
    if omega.abs() < 1e-6:
        return (1 - t) * z0 + t * z1
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


@torch.no_grad()
def interpolate(generator: Generator, z0: torch.Tensor, z1: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Images along the latent path from z0 to z1: (steps, C, H, W)."""
    return sample(generator, steps, z=slerp(z0, z1, torch.linspace(0, 1, steps)))
