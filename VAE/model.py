"""VAE: the variational autoencoder, trained by maximising the evidence lower bound (ELBO).

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. https://arxiv.org/abs/1312.6114
Evaluated with the importance-weighted bound of Burda, Grosse & Salakhutdinov, "Importance Weighted
Autoencoders", ICLR 2016. https://arxiv.org/abs/1509.00519

Model: prior p(z) = N(0, I), decoder p_theta(x|z), encoder q_phi(z|x) = N(mu(x), diag(exp(logvar(x)))).
  ELBO (Kingma & Welling Eq. 3, with the analytic KL of Eq. 10 / Appendix B):
      L(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))
      -KL  = 1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))                     (kl_divergence)
  Reparameterisation (Sec. 2.4, Eq. 10's sampling):  z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)  (reparameterize)
  The estimator (Eq. 10) uses L = 1 sample of z per image; the loss is -L(x) (elbo), optionally
      rec + beta * KL with beta warmed up linearly from 0 to 1 (train.py --kl-warmup).
  Importance-weighted bound (Burda et al. Eq. 8), k samples z_i ~ q(z|x):
      L_k(x) = log 1/k sum_i p(x|z_i) p(z_i) / q(z_i|x)  <=  log p(x);  L_1 = ELBO, L_k non-decreasing in k
      (iwae_nll returns -L_k in nats per image; log-sum-exp in float64).

Likelihoods p(x|z) (choose with Config.likelihood; train.py --likelihood auto picks by channels):
  * bernoulli: x in {0, 1}^D, log p = x l - softplus(l) with l the decoder's logits. Trained on dynamically
    binarised images x ~ Bernoulli(k / 255) (a fresh draw each time an image is seen, as Burda et al.); scored on
    held-out images binarised once with a fixed seed.                                       (bernoulli_log_prob)
  * logistic: the discretised logistic of PixelCNN++ (Salimans et al. 2017, https://arxiv.org/abs/1701.05517,
    Eq. 2) over the 256 levels x = k / 127.5 - 1, bin half-width 1/255, edge bins open to -inf / +inf:
      P(x) = sigma((x + 1/255 - m) / s) - sigma((x - 1/255 - m) / s), m from the decoder, log s per pixel from
      the decoder (logistic_scale "pixel") or one learned value per channel ("channel", the default).
                                                                                          (logistic_log_prob)
  * gaussian: N(x; m, s^2) on uniformly dequantised data x = (k + U) / 128 - 1 (shared.metrics convention),
      log s per pixel from the decoder ("learned") or fixed (Config.gaussian_std).          (gaussian_log_prob)
Conventions: images handed to the networks are in [-1, 1] (a binary x enters the encoder as 2x - 1); every
log-likelihood is a sum over the D = C*H*W pixels, in nats per image; losses are means over the batch.
Samples and reconstructions are the decoder's mean (Bernoulli: the probabilities), mapped to [-1, 1], never
draws from p(x|z).

Architecture: strided 4x4 convolutions halve the image until it is at most 8x8 (28 -> 14 -> 7, 32 -> 16 -> 8,
64 -> 32 -> 16 -> 8), channels doubling from `width`; a hidden fully connected layer; linear heads for mu and
logvar. The decoder mirrors it with transposed convolutions. SiLU activations, no normalisation layers (a
likelihood should not depend on the other images in a batch).

Deviations:
  * Convolutional encoder and decoder instead of the paper's one-hidden-layer MLPs (tanh units, Sec. 5); Adam
    instead of Adagrad.
  * Bernoulli decoder on dynamically binarised MNIST (Burda et al.'s protocol) rather than the paper's
    grey-level MNIST through a Bernoulli likelihood; RGB data get the discretised logistic (not in the paper,
    whose Gaussian decoder was for continuous data; the Gaussian is one flag away).
  * log s of the logistic and Gaussian is clamped below at -7 (as in PixelCNN++), so a likelihood cannot grow
    without bound on a constant pixel, and above at 3 (s <= e^3, wider than the data's range [-1, 1]), so the
    logistic's bin width (2/255) / s stays far from float32 underflow.
  * The logistic's mean is m = tanh(decoder output), inside the data's range (-1, 1) (the edge bins still reach
    probability ~1 as m -> +-1). Unbounded, a mean that drifts outside [-1, 1] under a small s costs |x - m| / s
    nats per pixel (~1e3 at s = e^-7), and the gradient spikes that followed diverged the shapes run.
  * The logistic's scale is one learned value per channel by default, not per pixel: with per-pixel scales the
    shapes decoder explained every object pixel by a wide logistic and its mean stayed black background (MSE
    0.217, FID 1484 after 10 minutes); with one scale the mean has to draw the shape (MSE 0.001, FID 284).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOODS = ("bernoulli", "gaussian", "logistic")
MIN_LOG_SCALE = -7.0  # lower clamp of log s (logistic, learned Gaussian), as in PixelCNN++
MAX_LOG_SCALE = 3.0  # upper clamp: s <= e^3 is wider than the data's range [-1, 1]; unclamped, log s of pixels
# the decoder cannot place kept growing on shapes (34 by step 1000); near 87 (2/255) / s underflows to 0 in float32
LogLikelihood = Callable[[torch.Tensor], torch.Tensor]  # z (k, B, D) -> log p(x|z) (k, B)


@dataclass
class Config:
    image_size: int = 32  # H = W; halved by stride-2 convs while above 8, so it must stay even until then (28, 32, 64)
    channels: int = 1  # image channels (1 grey, 3 RGB)
    z_dim: int = 16  # latent dimension D_z
    width: int = 16  # channels of the first conv; doubled at each further stride-2 conv
    hidden: int = 256  # units of the fully connected layer between the convs and the latent
    likelihood: str = "bernoulli"  # bernoulli | gaussian | logistic (train.py resolves --likelihood auto)
    gaussian_variance: str = "learned"  # learned (log s per pixel from the decoder) | fixed (s = gaussian_std)
    gaussian_std: float = 0.1  # s of the fixed-variance Gaussian, on the [-1, 1] scale
    logistic_scale: str = "channel"  # channel (one learned log s per channel) | pixel (log s per pixel from the decoder)

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"--likelihood must be one of auto, {', '.join(LIKELIHOODS)}, got {self.likelihood!r}")
        if self.gaussian_variance not in ("learned", "fixed") or self.logistic_scale not in ("pixel", "channel"):
            raise ValueError("--gaussian-variance must be learned|fixed and --logistic-scale pixel|channel")
        if not self.gaussian_std > 0:
            raise ValueError(f"--gaussian-std must be positive, got {self.gaussian_std}")
        size = self.image_size
        while size > 8:
            if size % 2:
                raise ValueError(f"VAE needs an --image-size that halves evenly down to 8 or less (e.g. 28, 32, "
                                 f"64), got {self.image_size}")
            size //= 2
        if size < 2:
            raise ValueError(f"--image-size must be at least 2, got {self.image_size}")

    @property
    def num_down(self) -> int:
        """Stride-2 convolutions of the encoder (= transposed ones of the decoder)."""
        n, size = 0, self.image_size
        while size > 8:
            n, size = n + 1, size // 2
        return n

    @property
    def bottom(self) -> int:
        """Side of the smallest feature map (7 at 28, 8 at 32 and 64)."""
        return self.image_size >> self.num_down

    @property
    def decoder_channels(self) -> int:
        """Channels of the decoder's output: parameters of p(x|z) per pixel."""
        two = ((self.likelihood == "gaussian" and self.gaussian_variance == "learned")
               or (self.likelihood == "logistic" and self.logistic_scale == "pixel"))
        return 2 * self.channels if two else self.channels


# ---------------------------------------------------------------- building blocks

def down(c_in: int, c_out: int) -> nn.Sequential:
    """4x4 stride-2 conv halving H and W, then SiLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.SiLU())


def up(c_in: int, c_out: int) -> nn.Sequential:
    """4x4 stride-2 transposed conv doubling H and W, then SiLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.SiLU())


def widths(cfg: Config) -> list[int]:
    """Channels after each stride-2 conv of the encoder, e.g. [16, 32] at 32x32, [16, 32, 64] at 64x64 (width 16)."""
    return [cfg.width * 2 ** i for i in range(cfg.num_down)] or [cfg.width]


# ---------------------------------------------------------------- networks

class Encoder(nn.Module):
    """q(z|x): image (B, C, H, W) in [-1, 1] -> (mu, logvar), each (B, z_dim)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        w = widths(cfg)
        convs = [down(a, b) for a, b in zip([cfg.channels] + w[:-1], w)] if cfg.num_down else \
            [nn.Sequential(nn.Conv2d(cfg.channels, w[0], 3, padding=1), nn.SiLU())]
        self.convs = nn.Sequential(*convs)
        self.fc = nn.Sequential(nn.Linear(w[-1] * cfg.bottom ** 2, cfg.hidden), nn.SiLU())
        self.to_stats = nn.Linear(cfg.hidden, 2 * cfg.z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(self.convs(x).flatten(1))  # (B, w * b * b) -> (B, hidden)
        mu, logvar = self.to_stats(h).float().chunk(2, dim=1)  # (B, z_dim) each, fp32 for the objective
        return mu, logvar


class Decoder(nn.Module):
    """p(x|z): z (B, z_dim) -> the likelihood's parameters per pixel (B, cfg.decoder_channels, H, W)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        w = widths(cfg)[::-1]  # e.g. [32, 16]
        self.shape = (w[0], cfg.bottom, cfg.bottom)
        self.fc = nn.Sequential(nn.Linear(cfg.z_dim, cfg.hidden), nn.SiLU(),
                                nn.Linear(cfg.hidden, w[0] * cfg.bottom ** 2), nn.SiLU())
        self.ups = nn.Sequential(*[up(a, b) for a, b in zip(w[:-1], w[1:])])
        last = nn.ConvTranspose2d(w[-1], cfg.decoder_channels, kernel_size=4, stride=2, padding=1) \
            if cfg.num_down else nn.Conv2d(w[-1], cfg.decoder_channels, 3, padding=1)
        self.to_params = last
        # one learned log s per channel for logistic_scale "channel" (unused otherwise, kept for a fixed layout)
        self.log_scale = nn.Parameter(torch.zeros(cfg.channels)) if cfg.likelihood == "logistic" and \
            cfg.logistic_scale == "channel" else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, *self.shape)  # (B, w, b, b)
        return self.to_params(self.ups(h))  # (B, decoder_channels, H, W)


class VAE(nn.Module):
    """Encoder + decoder; the objective functions below take their outputs."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    def forward(self, x_in: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One-sample terms for images x_in (encoder input, [-1, 1]) modelled as x: (log p(x|z), KL, mu), (B,)x2, (B, D_z)."""
        mu, logvar = self.encoder(x_in)
        z = reparameterize(mu, logvar)
        rec = log_likelihood(self.cfg, self.decoder, self.decoder(z), x)
        return rec, kl_divergence(mu, logvar), mu


# ---------------------------------------------------------------- data as the likelihood sees it

def observe(images_uint8: torch.Tensor, likelihood: str, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images -> (x_in for the encoder in [-1, 1], x the likelihood scores), both (B, C, H, W) float.

    bernoulli: x ~ Bernoulli(k / 255) (dynamic binarisation; a fixed `generator` binarises a test set once);
    logistic: x = k / 127.5 - 1; gaussian: x = (k + U) / 128 - 1, U ~ U[0, 1) (uniform dequantisation).
    Without `generator` the draws come from the global RNG (saved in checkpoints, so resume stays exact)."""
    k = images_uint8.float()
    if likelihood == "bernoulli":
        x = torch.bernoulli(k / 255, generator=generator)
        return 2 * x - 1, x
    if likelihood == "gaussian":
        noise = torch.rand(k.shape, generator=generator, device=k.device).clamp(max=1 - 2 ** -16)
        x = (k + noise) / 128 - 1
        return x, x
    x = k / 127.5 - 1
    return x, x


# ---------------------------------------------------------------- objective

def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension, (B, D_z) (Kingma & Welling Appendix B):
    1/2 (mu^2 + exp(logvar) - 1 - logvar). Sum over dim 1 for the KL per image."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (Sec. 2.4): a sample of q(z|x) differentiable in mu, logvar."""
    eps = torch.randn_like(mu) if eps is None else eps
    return mu + (0.5 * logvar).exp() * eps


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; sigma(l)) = x l - softplus(l), summed over pixels: (B, ...) -> (B,)."""
    logits = logits.float()
    return (x * logits - F.softplus(logits)).flatten(1).sum(1)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log N(x; m, s^2) = -((x - m) / s)^2 / 2 - log s - log(2 pi) / 2, summed over pixels: (B,)."""
    mean, log_std = mean.float(), log_std.float()
    return (-0.5 * ((x - mean) * torch.exp(-log_std)).pow(2) - log_std
            - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def logistic_log_prob(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Discretised logistic (PixelCNN++ Eq. 2) of x = k / 127.5 - 1, summed over pixels: (B,).

    P = sigma(a) - sigma(b), a = (x + 1/255 - m) / s, b = (x - 1/255 - m) / s; the edge bins k = 0 and 255 take
    the whole tail (P = sigma(a), resp. 1 - sigma(b)). log(sigma(a) - sigma(b)) is evaluated as
    log sigma(a) + log sigma(-b) + log(1 - exp(-(a - b))), exact for any m, s (no pdf fallback). The bin width
    a - b = (2/255) / s is taken from s alone, never as the difference of a and b: far from the mean (|a| > ~6e4 / s
    in float32) a and b round to the same number, b - a = 0 and log(0) = -inf, whose gradient is NaN even in the
    edge bins (torch.where still backpropagates through the unselected branch)."""
    mean, log_scale = mean.float(), log_scale.float()
    inv_s = torch.exp(-log_scale)
    a, b = (x - mean + 1 / 255) * inv_s, (x - mean - 1 / 255) * inv_s
    log_width = torch.log(-torch.expm1(-(2 / 255) * inv_s))  # log(1 - e^-(a - b)), a function of s only
    middle = F.logsigmoid(a) + F.logsigmoid(-b) + log_width
    log_p = torch.where(x < -0.999, F.logsigmoid(a), torch.where(x > 0.999, F.logsigmoid(-b), middle))
    return log_p.flatten(1).sum(1)


def split_params(cfg: Config, decoder: Decoder, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decoder output -> (mean or logits (B, C, H, W), log s broadcastable to it, or None for Bernoulli)."""
    c = cfg.channels
    if cfg.likelihood == "bernoulli":
        return params, None
    loc = params[:, :c]
    if cfg.likelihood == "logistic":  # m = tanh(raw) in (-1, 1): the data's range, so no pixel is ever far away
        loc = torch.tanh(loc)
    if cfg.decoder_channels == 2 * c:
        return loc, params[:, c:].clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)
    if cfg.likelihood == "gaussian":  # fixed variance
        return loc, params.new_full((1, c, 1, 1), math.log(cfg.gaussian_std))
    return loc, decoder.log_scale.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE).view(1, c, 1, 1)


def log_likelihood(cfg: Config, decoder: Decoder, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) in nats per image (B,), from the decoder's output for z: the reconstruction term of the ELBO."""
    loc, log_s = split_params(cfg, decoder, params)
    if cfg.likelihood == "bernoulli":
        return bernoulli_log_prob(loc, x)
    if cfg.likelihood == "gaussian":
        return gaussian_log_prob(loc, log_s.expand_as(loc), x)
    return logistic_log_prob(loc, log_s.expand_as(loc), x)


def decoder_mean(cfg: Config, decoder: Decoder, params: torch.Tensor) -> torch.Tensor:
    """E[x|z] mapped to [-1, 1] (Bernoulli: 2 sigma(l) - 1; logistic / Gaussian: m clamped): what images show."""
    loc, _ = split_params(cfg, decoder, params)
    return 2 * torch.sigmoid(loc.float()) - 1 if cfg.likelihood == "bernoulli" else loc.float().clamp(-1, 1)


def elbo(mu: torch.Tensor, logvar: torch.Tensor, log_likelihood: LogLikelihood,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One-sample ELBO (Eq. 10 with L = 1, analytic KL) in nats per image, (B,).

    mu, logvar: (B, D_z) of q(z|x); log_likelihood(z) takes z (k, B, D_z) (here k = 1) and returns log p(x|z)
    (k, B). With a `generator` the noise is reproducible (it runs on CPU and is moved to mu's device)."""
    eps = torch.randn(mu.shape, generator=generator).to(mu.device) if generator is not None else None
    z = reparameterize(mu.float(), logvar.float(), eps)
    return log_likelihood(z[None])[0].float() - kl_divergence(mu.float(), logvar.float()).sum(1)


def negative_elbo(rec: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """The training loss: mean over the batch of -(log p(x|z) - beta KL) (beta = 1: -ELBO, Eq. 10 with L = 1).
    rec: log p(x|z) (B,); kl: per dimension (B, D_z); beta < 1 only during the optional KL warm-up."""
    return (-rec + beta * kl.sum(1)).mean()


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dim (float64)."""
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    return (-0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi))).sum(-1)


def iwae_nll(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, log_likelihood: LogLikelihood,
             k: int, chunk: int = 100, generator: torch.Generator | None = None) -> torch.Tensor:
    """-L_k(x) (Burda et al. Eq. 8), the importance-weighted upper bound on -log p(x), in nats per image (B,).

    x: the B images (only its batch size and device are used: `log_likelihood` already holds them); mu, logvar:
    (B, D_z) of q(z|x); log_likelihood(z) takes z of shape (k_c, B, D_z), k_c <= chunk samples per image, and
    returns log p(x_b | z[i, b]) of shape (k_c, B). The k samples are drawn in chunks of `chunk`;
    log w = log p(x|z) + log p(z) - log q(z|x) and the log-sum-exp over all k are in float64.
    k = 1 gives -ELBO estimated with the sampled (not the analytic) KL."""
    if k < 1 or mu.shape[0] != x.shape[0]:
        raise ValueError(f"iwae_nll needs k >= 1 and one (mu, logvar) row per image, got k={k}, "
                         f"{mu.shape[0]} rows for {x.shape[0]} images")
    mu, logvar = mu.float(), logvar.float()
    parts = []  # per chunk: logsumexp_i log w_i, (B,) float64
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        eps = torch.randn((n, *mu.shape), generator=generator).to(mu.device)  # (n, B, D_z)
        z = reparameterize(mu, logvar, eps)
        log_w = (log_likelihood(z).double() + log_normal(z, torch.zeros_like(mu), torch.zeros_like(logvar))
                 - log_normal(z, mu, logvar))  # (n, B)
        parts.append(torch.logsumexp(log_w, dim=0))
    return -(torch.logsumexp(torch.stack(parts), dim=0) - math.log(k))


def model_log_likelihood(model: VAE, x: torch.Tensor) -> LogLikelihood:
    """The closure iwae_nll / elbo take for this VAE: z (k, B, D_z) -> log p(x|z) (k, B), x (B, C, H, W)."""
    def log_p(z: torch.Tensor) -> torch.Tensor:
        n, b = z.shape[:2]
        params = model.decoder(z.reshape(n * b, -1))  # (n B, C', H, W)
        x_rep = x.unsqueeze(0).expand(n, *x.shape).reshape(n * b, *x.shape[1:])
        return log_likelihood(model.cfg, model.decoder, params, x_rep).view(n, b)
    return log_p


# ---------------------------------------------------------------- sampling

@torch.no_grad()
def sample(model: VAE, n: int, z: torch.Tensor | None = None, rng: torch.Generator | None = None,
           batch_size: int = 256) -> torch.Tensor:
    """n decoder means (n, C, H, W) in [-1, 1] of z ~ N(0, I) (or of the given z, (n, z_dim))."""
    device = next(model.parameters()).device
    if z is None:
        z = torch.randn(n, model.cfg.z_dim, generator=rng)
    return torch.cat([decode(model, chunk.to(device)) for chunk in z.split(batch_size)])


@torch.no_grad()
def decode(model: VAE, z: torch.Tensor) -> torch.Tensor:
    """Decoder mean of z (B, z_dim) -> (B, C, H, W) in [-1, 1]."""
    return decoder_mean(model.cfg, model.decoder, model.decoder(z))


@torch.no_grad()
def encode(model: VAE, x_in: torch.Tensor) -> torch.Tensor:
    """Posterior mean E_q[z] = mu(x) of images (B, C, H, W) in [-1, 1] -> (B, z_dim)."""
    return model.encoder(x_in)[0]


@torch.no_grad()
def reconstruct(model: VAE, x_in: torch.Tensor) -> torch.Tensor:
    """Decoder mean at the posterior mean: (B, C, H, W) in [-1, 1] -> same shape, deterministic."""
    return decode(model, encode(model, x_in))


@torch.no_grad()
def interpolate(model: VAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decoder means along the straight line between the posterior means of two images (C, H, W): (steps, C, H, W)."""
    mu = encode(model, torch.stack([x_a, x_b]))  # (2, z_dim)
    t = torch.linspace(0, 1, steps, device=mu.device)[:, None]
    return decode(model, (1 - t) * mu[0] + t * mu[1])
