"""The network of score_sde (model.py): DDPM's small U-Net (Ho et al. 2020, Appendix B) conditioned on continuous
time, outputting the scaled score s(t) s_theta(x, t). Split from model.py so that model.py holds the SDE math; the
blocks below are checked copies of DDPM/model.py (see the marks), the U-Net an adaptation.
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


# Adapted from DDPM/model.py (norm): gcd(32, C / 4) groups of at least 4 channels (DDPM: min(32, C / 4))
def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels. With one channel per group the GroupNorm after
    the time projection would subtract each channel's mean and erase the time embedding (it is added as a
    per-channel constant): at width 16 the network would not depend on t at all."""
    return nn.GroupNorm(math.gcd(32, max(channels // 4, 1)), channels)


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


# Adapted from DDPM/model.py (UNet): continuous time / log-sigma embedding (sinusoidal embedding of 999 t)
class UNet(nn.Module):
    """s(t) s_theta(x, t), the scaled score: the U-Net of Ho et al. Appendix B, sized by Config."""

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
        """x (B, C, H, W), t (B,) continuous in [0, 1] -> the scaled score (B, C, H, W)."""
        temb = self.time_mlp(timestep_embedding(999 * t, self.cfg.width).to(x.dtype))  # VE: affine in log sigma
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
