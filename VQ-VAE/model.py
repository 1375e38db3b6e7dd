"""VQ-VAE: van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning",
https://arxiv.org/abs/1711.00937 -- with a second-stage autoregressive prior over the code grid.

Stage 1, the VQ-VAE. An encoder maps x to z_e(x), a grid of D-dimensional vectors (32x32 -> 8x8, 28x28 -> 7x7:
two stride-2 convolutions). Each vector is replaced by its nearest row of a codebook e (K x D):
    k = argmin_j ||z_e(x) - e_j||_2,   z_q(x) = e_k                                       (Eq. 1, 2)
and the decoder reconstructs x from z_q. argmin has no gradient: the straight-through estimator copies the
decoder's gradient at z_q to z_e unchanged (Sec. 3.2; `straight_through`). The objective is
    L = log p(x | z_q(x)) + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2                  (Eq. 3)
with a fixed-variance Gaussian decoder (the first term is an MSE) and beta = 0.25. By default the codebook is
not trained by its loss term but by exponential moving averages (Appendix A.1, Eq. 6-8):
    N_i <- gamma N_i + (1 - gamma) n_i,   m_i <- gamma m_i + (1 - gamma) sum_j z_e_{i,j},   e_i = m_i / N_i
with decay gamma = 0.99, n_i the number of encoder outputs whose nearest code is i, and N_i Laplace-smoothed
before the division (as in the authors' Sonnet code). `--codebook loss` uses Eq. 3's codebook term instead.

Stage 2, the prior. A VQ-VAE alone cannot sample; the paper fits an autoregressive prior p(k) over the code
grid (a PixelCNN) after training the VQ-VAE, and samples x by decoding k ~ p(k). Here the prior is a small
causal transformer (GPT-style, pre-LayerNorm) over the 64 codes of the 8x8 grid in raster order, trained by
maximum likelihood on the codes of the training set (-log p(k) = -sum_t log p(k_t | k_<t)). Why not the gated
PixelCNN: with 64 tokens a transformer sees the whole past at every position (no blind spot, no masked-
convolution stack to get right), its causality is one attention mask that a test checks exactly, and at this
size it is faster on a CPU than a 15-layer gated PixelCNN at 8x8.

Conventions: images in [-1, 1]; the reconstruction term is the mean squared error over pixels (a Gaussian
with fixed variance, up to constants and scale); codebook and commitment terms are means over the elements of
z_e; the prior's loss is the mean cross-entropy in nats per code. Codes are (B, H', W') int64 in [0, K).

Deviations:
- Sizes for a CPU: 64 hidden channels (paper: 256), K = 128 codes of dimension D = 32 (paper: 512 x 64; the
  paper's network is `--hidden 256 --res-hidden 256 --codes 512 --code-dim 64`).
- Dead codes: a code whose EMA count N_i falls below `dead_threshold` is restarted at a random encoder output
  of the current batch (not in the paper; it keeps the codebook in use, as in Jukebox, Dhariwal et al. 2020).
- The EMA counts start at 1 and the EMA sums at the initial codebook (so e = m / N holds from step 0); the
  paper does not say how they are initialised.
- The decoder's output is linear (the Gaussian's mean), clamped to [-1, 1] only for images: a final tanh
  saturated at MNIST's black background and stalled training.
- The prior is a causal transformer, not the paper's gated PixelCNN (see above), without attention dropout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Config:
    image_size: int = 32  # input height = width (divisible by 4: the code grid is image_size / 4)
    channels: int = 1  # image channels (1 for MNIST, 3 for RGB)
    hidden: int = 64  # channels of the strided convolutions and residual stacks (paper: 256)
    res_hidden: int = 32  # hidden channels inside each residual block (paper: 256)
    res_blocks: int = 2  # residual blocks in the encoder and in the decoder (paper: 2)
    codes: int = 128  # K, the codebook size (paper: 512)
    code_dim: int = 32  # D, the dimension of each code (paper: 64)
    codebook: str = "ema"  # ema: EMA updates (Appendix A.1) | loss: the codebook term of Eq. 3
    beta: float = 0.25  # commitment weight beta of Eq. 3 (paper: 0.25)
    decay: float = 0.99  # EMA decay gamma (paper: 0.99)
    eps: float = 1e-5  # Laplace smoothing of the EMA counts
    dead_threshold: float = 1.0  # restart codes whose EMA count (vectors per batch) falls below this (0 = never)
    prior_width: int = 64  # transformer prior: embedding width
    prior_layers: int = 4  # transformer blocks
    prior_heads: int = 4  # attention heads
    prior_dropout: float = 0.1  # dropout on the prior's embeddings and residual branches (none on attention)

    @property
    def grid(self) -> int:
        """Side of the code grid (two stride-2 convolutions)."""
        return self.image_size // 4

    def __post_init__(self) -> None:
        if self.image_size % 4 or self.image_size < 8:
            raise ValueError(f"--image-size must be a multiple of 4 and >= 8, got {self.image_size}")
        if self.codebook not in ("ema", "loss"):
            raise ValueError(f"--codebook must be ema or loss, got {self.codebook!r}")
        if self.prior_width % self.prior_heads:
            raise ValueError(f"--prior-width {self.prior_width} must be divisible by --prior-heads {self.prior_heads}")


# ----------------------------------------------------------------------------------------- building blocks

class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the paper's residual block."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions <= t only."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        """x (B, T, C); with `cache` ([] or [keys, values] of the earlier positions, updated in place) x holds
        the next position(s) only, which attend to every cached one (incremental sampling)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, c)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        # no attention dropout (it makes the CPU kernel 2x slower); one new query needs no mask
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), cache))
        return x + self.drop(self.mlp(self.ln2(x)))


# ----------------------------------------------------------------------------------------------- networks

class Encoder(nn.Module):
    """x (B, C, S, S) -> z_e (B, D, S/4, S/4): two stride-2 4x4 convolutions, a 3x3 one, residual blocks."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        h = cfg.hidden
        self.net = nn.Sequential(
            nn.Conv2d(cfg.channels, h, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(h, h, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(h, h, 3, padding=1),
            *[ResidualBlock(h, cfg.res_hidden) for _ in range(cfg.res_blocks)], nn.ReLU(),
            nn.Conv2d(h, cfg.code_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """z_q (B, D, S/4, S/4) -> x_hat (B, C, S, S), the Gaussian's mean: a 3x3 conv, residual blocks, two 4x4
    transposed convolutions with stride 2; linear output (a tanh saturates at the black MNIST background and
    stalls training), clamped to [-1, 1] only for images."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        h = cfg.hidden
        self.net = nn.Sequential(
            nn.Conv2d(cfg.code_dim, h, 3, padding=1),
            *[ResidualBlock(h, cfg.res_hidden) for _ in range(cfg.res_blocks)], nn.ReLU(),
            nn.ConvTranspose2d(h, h, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(h, cfg.channels, 4, stride=2, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Codebook(nn.Module):
    """The K x D embedding e with its EMA statistics: counts N (K,) and sums m (K, D) (Appendix A.1).
    With codebook="ema" e is updated by `ema_update`, not by the optimizer (requires_grad False)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        e = torch.empty(cfg.codes, cfg.code_dim).uniform_(-1 / cfg.codes, 1 / cfg.codes)
        self.embedding = nn.Parameter(e, requires_grad=cfg.codebook == "loss")
        self.register_buffer("cluster_size", torch.ones(cfg.codes))  # N_i, unsmoothed
        self.register_buffer("embed_sum", e.clone())  # m_i

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Eq. 1: z (N, D) -> index of the nearest code (N,), by ||z||^2 - 2 z.e + ||e||^2."""
        e = self.embedding
        distances = z.square().sum(1, keepdim=True) - 2 * z @ e.t() + e.square().sum(1)  # (N, K)
        return distances.argmin(1)


class VQVAE(nn.Module):
    """Encoder -> nearest-code quantisation -> decoder."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.codebook, self.decoder = Encoder(cfg), Codebook(cfg), Decoder(cfg)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_e (B, D, h, w) -> (z_q (B, D, h, w) with rows of e, codes (B, h, w))."""
        B, D, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, D)  # (B h w, D)
        codes = self.codebook.nearest(flat.float())
        return self.lookup(codes.view(B, h, w)), codes.view(B, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> z_q (B, D, h, w) (Eq. 2)."""
        return self.codebook.embedding[codes].permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (x_hat, z_e, z_q, codes); the decoder sees z_q through the straight-through estimator."""
        z_e = self.encoder(x)
        z_q, codes = self.quantize(z_e)
        return self.decoder(straight_through(z_e, z_q)), z_e, z_q, codes


class Prior(nn.Module):
    """Causal transformer over the raster-ordered code grid: codes (B, T) -> logits (B, T, K) where position t
    gives p(k_t | k_<t); the input is a start token followed by k_0 .. k_{T-2}."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg, T, W = cfg, cfg.grid ** 2, cfg.prior_width
        self.start = cfg.codes  # the start token's index in the embedding
        self.token = nn.Embedding(cfg.codes + 1, W)
        self.position = nn.Parameter(torch.zeros(T, W))
        self.drop = nn.Dropout(cfg.prior_dropout)
        self.blocks = nn.ModuleList(TransformerBlock(W, cfg.prior_heads, cfg.prior_dropout)
                                    for _ in range(cfg.prior_layers))
        self.ln, self.head = nn.LayerNorm(W), nn.Linear(W, cfg.codes)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        B, T = codes.shape
        inputs = torch.cat([codes.new_full((B, 1), self.start), codes[:, :-1]], 1)  # shift right by one
        x = self.drop(self.token(inputs) + self.position[:T])  # (B, T, W)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))  # (B, T, K)

    def step(self, previous: torch.Tensor, t: int, caches: list[list]) -> torch.Tensor:
        """Logits (B, K) of position t given the code at t-1 (`previous`, (B,); the start token at t = 0) and the
        per-block key/value caches of positions < t (one list per block, filled in place)."""
        x = self.token(previous)[:, None] + self.position[t]  # (B, 1, W)
        for block, cache in zip(self.blocks, caches):
            x = block(x, cache)
        return self.head(self.ln(x))[:, 0]


# ---------------------------------------------------------------------------------------------- objective

def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Sec. 3.2: the value of z_q, the gradient of z_e: d L / d z_e = d L / d z_q."""
    return z_e + (z_q - z_e).detach()


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3, first term: -log p(x | z_q) of a fixed-variance Gaussian, up to scale and constants: the MSE."""
    return F.mse_loss(x_hat.float(), x.float())


def codebook_loss(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Eq. 3, second term: ||sg[z_e] - e||^2 (moves the codes to the encoder outputs; unused with EMA)."""
    return F.mse_loss(z_q.float(), z_e.detach().float())


def commitment_loss(z_e: torch.Tensor, z_q: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 3, third term: beta ||z_e - sg[e]||^2 (keeps the encoder committed to its codes)."""
    return beta * F.mse_loss(z_e.float(), z_q.detach().float())


@torch.no_grad()
def ema_update(codebook: Codebook, z: torch.Tensor, codes: torch.Tensor, decay: float, eps: float,
               all_reduce=None) -> torch.Tensor:
    """Appendix A.1 (Eq. 6-8) on z (N, D) with nearest codes (N,); returns the Laplace-smoothed counts.
    N_i <- decay N_i + (1 - decay) n_i; m_i <- decay m_i + (1 - decay) sum z; e_i = m_i / N~_i with
    N~_i = (N_i + eps) / (n + K eps) * n, n = sum_i N_i (the smoothing keeps the total n). `all_reduce` sums
    n_i and the sums over data-parallel processes (so every replica makes the same update)."""
    one_hot = F.one_hot(codes, codebook.embedding.shape[0]).type_as(z)  # (N, K)
    counts, sums = one_hot.sum(0), one_hot.t() @ z  # (K,), (K, D)
    if all_reduce is not None:
        counts, sums = all_reduce(counts), all_reduce(sums)
    codebook.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    codebook.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    n, K = codebook.cluster_size.sum(), codebook.cluster_size.numel()
    smoothed = (codebook.cluster_size + eps) / (n + K * eps) * n
    codebook.embedding.data.copy_(codebook.embed_sum / smoothed.unsqueeze(1))
    return smoothed


@torch.no_grad()
def track_counts(codebook: Codebook, codes: torch.Tensor, decay: float, all_reduce=None) -> None:
    """--codebook loss: keep the EMA counts N_i only (for usage and dead-code restarts)."""
    counts = torch.bincount(codes, minlength=codebook.cluster_size.numel()).float()
    counts = all_reduce(counts) if all_reduce is not None else counts
    codebook.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)


@torch.no_grad()
def restart_dead_codes(codebook: Codebook, z: torch.Tensor, threshold: float) -> torch.Tensor:
    """Codes with EMA count N_i < threshold jump to random rows of z (N, D), with N_i = 1 and m_i = z.
    Returns the restarted indices. Draws from the global RNG (the caller broadcasts under data parallelism)."""
    dead = (codebook.cluster_size < threshold).nonzero().squeeze(1)
    if len(dead):
        picks = z[torch.randint(0, z.shape[0], (len(dead),), device=z.device)]
        codebook.embedding.data[dead] = picks
        codebook.embed_sum[dead] = picks
        codebook.cluster_size[dead] = 1.0
    return dead


def perplexity(codes: torch.Tensor, num_codes: int) -> float:
    """exp(H(p)) of the empirical code distribution p (K = perfectly even use, 1 = one code)."""
    p = torch.bincount(codes.flatten(), minlength=num_codes).double() / codes.numel()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


def prior_nll(prior: Prior, codes: torch.Tensor) -> torch.Tensor:
    """-log p(k) / T per image (B,), in nats per code: the mean of -log p(k_t | k_<t) over the grid."""
    logits = prior(codes.flatten(1))  # (B, T, K)
    return F.cross_entropy(logits.float().transpose(1, 2), codes.flatten(1), reduction="none").mean(1)


# ----------------------------------------------------------------------------------------------- sampling

@torch.no_grad()
def sample_codes(prior: Prior, n: int, temperature: float = 1.0, top_k: int = 0,
                 rng: torch.Generator | None = None) -> torch.Tensor:
    """Ancestral sampling k_t ~ p(k_t | k_<t)^(1/temperature), optionally restricted to the top_k codes;
    returns (n, grid, grid) codes. Keys and values of earlier positions are cached (Prior.step)."""
    g, device = prior.cfg.grid, prior.position.device
    codes = torch.zeros(n, g * g, dtype=torch.long, device=device)
    previous, caches = codes.new_full((n,), prior.start), [[] for _ in prior.blocks]
    for t in range(g * g):
        logits = prior.step(previous, t, caches).float() / max(temperature, 1e-6)  # (n, K)
        if top_k:
            kth = logits.topk(min(top_k, logits.shape[1]), dim=1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = logits.softmax(1)
        codes[:, t] = previous = torch.multinomial(probs.cpu(), 1, generator=rng).squeeze(1).to(device)
    return codes.view(n, g, g)


@torch.no_grad()
def sample(vqvae: VQVAE, prior: Prior, n: int, temperature: float = 1.0, top_k: int = 0,
           rng: torch.Generator | None = None) -> torch.Tensor:
    """n images (n, C, S, S) in [-1, 1]: codes from the prior, decoded."""
    return vqvae.decoder(vqvae.lookup(sample_codes(prior, n, temperature, top_k, rng))).clamp(-1, 1)


@torch.no_grad()
def reconstruct(vqvae: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """x -> decoder(z_q(x)) clamped to [-1, 1], the deterministic reconstruction."""
    return vqvae(x)[0].clamp(-1, 1)
