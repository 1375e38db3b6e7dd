"""The networks of latent diffusion (model.py): the stage-1 KL autoencoder (encoder E, decoder D) and the stage-2
latent U-Net eps_theta (Ho et al. 2020, Appendix B, adapted). Split from model.py so that model.py holds the
objectives and samplers; they know nothing about them.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from model import Config

# ---------------------------------------------------------------- building blocks

# Copied from DDPM/model.py: timestep_embedding
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer t (B,) -> (B, dim), as in the Transformer (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, fewer when the channels do not divide (small test networks)."""
    # Adapted from DDPM/model.py (norm): its version before fc8c0a3 (gcd(32, C) groups), which the default run
    # was trained with; ResBlock here applies the embedding after its norm, so one-channel groups cancel nothing
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, GroupNorm scaled and shifted by the time (+ class) embedding, SiLU-dropout-conv
    (zero-initialised), + skip."""
    # Adapted from DDPM/model.py (ResBlock): the embedding enters as a scale and shift after norm2 (AdaGN,
    # Dhariwal & Nichol 2021) instead of a shift before it: with <= 32 channels norm() has one channel per
    # group, and a per-channel shift added before a per-channel GroupNorm is removed by it entirely

    def __init__(self, c_in: int, c_out: int, t_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, 2 * c_out)
        self.norm2, self.dropout = norm(c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (Ho et al.'s code)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.time(F.silu(temb))[:, :, None, None].chunk(2, dim=1)  # (B, c_out, 1, 1) each
        h = self.norm2(self.conv1(F.silu(self.norm1(x)))) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AEBlock(nn.Module):
    """GroupNorm-SiLU-conv, GroupNorm-SiLU-conv, + skip: the autoencoder's residual block."""
    # Adapted from DDPM/model.py (ResBlock): no time embedding, no dropout, the second conv not zero-initialised

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


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


# ---------------------------------------------------------------- stage 1: the autoencoder

class Encoder(nn.Module):
    """E: x (B, C, H, W) -> mean and log-variance of q(z | x), each (B, c, H/f, W/f)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        chans = cfg.ae_channels
        self.conv_in = nn.Conv2d(cfg.channels, chans[0], 3, padding=1)
        layers, c = [], chans[0]
        for i, ch in enumerate(chans):  # blocks at each resolution, a stride-2 conv between levels
            for _ in range(cfg.ae_blocks):
                layers.append(AEBlock(c, ch))
                c = ch
            if i < len(chans) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = nn.Sequential(AEBlock(c, c), Attention(c), AEBlock(c, c))
        self.norm_out, self.conv_out = norm(c), nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv_out(F.silu(self.norm_out(self.mid(self.down(self.conv_in(x))))))  # (B, 2c, h, w)
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the paper's code clamps the log-variance the same way


class Decoder(nn.Module):
    """D: z (B, c, H/f, W/f) -> x_hat (B, C, H, W), unbounded (trained raw; clamped by `decode`)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        chans = cfg.ae_channels[::-1]
        c = chans[0]
        self.conv_in = nn.Conv2d(cfg.latent_channels, c, 3, padding=1)
        self.mid = nn.Sequential(AEBlock(c, c), Attention(c), AEBlock(c, c))
        layers = []
        for i, ch in enumerate(chans):  # blocks at each resolution, nearest-neighbour x2 + conv between levels
            for _ in range(cfg.ae_blocks):
                layers.append(AEBlock(c, ch))
                c = ch
            if i < len(chans) - 1:
                layers += [nn.Upsample(scale_factor=2.0), nn.Conv2d(c, c, 3, padding=1)]
        self.up = nn.Sequential(*layers)
        self.norm_out, self.conv_out = norm(c), nn.Conv2d(c, cfg.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.up(self.mid(self.conv_in(z))))))


class Autoencoder(nn.Module):
    """The KL-regularised autoencoder of Sec. 3.1: E, D and the reparameterised draw z = mu + sigma eps."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (x_hat raw, mean, logvar); z ~ q(z | x) drawn from the global RNG."""
        mean, logvar = self.encoder(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        return self.decoder(z), mean, logvar


# ---------------------------------------------------------------- stage 2: the latent U-Net

class UNet(nn.Module):
    """eps_theta(z_t, t[, y]) on the latents: the U-Net of Ho et al. Appendix B, sized by Config, with the latent
    scale factor s as a buffer (set by train.py from the data, saved with the weights)."""
    # Adapted from DDPM/model.py (UNet): latent shape (latent_channels, latent_size), an optional class
    # embedding (index num_classes = the null class) added to the time embedding, the scale_factor buffer

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        w, t_dim = cfg.width, 4 * cfg.width
        self.register_buffer("scale_factor", torch.ones(()))
        self.time_mlp = nn.Sequential(nn.Linear(w, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, t_dim) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.latent_channels, w, 3, padding=1)
        chans, skips, res = [w * m for m in cfg.levels], [w], cfg.latent_size
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
        self.norm_out, self.conv_out = norm(c), nn.Conv2d(c, cfg.latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, c, h, w), t (B,) integers in 1..T, y (B,) labels in 0..num_classes (num_classes = null)."""
        temb = self.time_mlp(timestep_embedding(t, self.cfg.width).to(x.dtype))
        if self.class_emb is not None:
            y = torch.full_like(t, self.cfg.num_classes) if y is None else y
            temb = temb + self.class_emb(y).to(temb.dtype)
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
