"""MaskedAE: Masked Autoencoders Are Scalable Vision Learners.

He, Chen, Xie, Li, Dollar & Girshick, CVPR 2022. https://arxiv.org/abs/2111.06377
The encoder is a Vision Transformer (Dosovitskiy et al. 2021, https://arxiv.org/abs/2010.11929).

The method (MAE Sec. 3), in the order the code runs it:
  * patchify: an image (C, H, W) becomes L = (H/p)(W/p) patches, each a vector of p*p*C pixels  (patchify)
  * random masking: per image, draw noise u ~ U(0, 1)^L, sort it (argsort), keep the first
        K = int(L (1 - r))
    patches of that random order and mask the other L - K (mask ratio r = 0.75 by default). This is the paper's
    "random shuffle, keep the first subset, unshuffle after the encoder" (Sec. 3, Simple implementation).  (random_masking)
  * encoder: a ViT on the K VISIBLE patches only (plus one cls token): linear patch embedding + fixed 2-D sin-cos
    positional embedding, pre-norm transformer blocks, a final LayerNorm. No mask tokens enter it, so its cost
    grows with K, not with L.                                                                  (Encoder)
  * decoder: a lighter transformer on the FULL set: the encoded visible tokens (projected to the decoder width),
    a shared learned mask token at every masked position, unshuffled back to image order, plus the decoder's own
    fixed 2-D sin-cos positional embedding; a linear head predicts the p*p*C pixels of every patch.  (Decoder)
  * loss: mean squared error per patch, averaged over the MASKED patches only (Sec. 3, Reconstruction target):
        L = sum_i m_i * mean_j (x_hat_ij - t_ij)^2 / sum_i m_i,   m_i = 1 if patch i is masked     (masked_patch_loss)
    with t = the patch's pixels, or with --norm-pix-loss the pixels normalised by that patch's own mean and
    variance, t_ij = (x_ij - mu_i) / sqrt(var_i + 1e-6) (the paper's "normalized pixels" variant, Table 1c).
  * optimiser (Appendix A.1, Table 8): AdamW, betas (0.9, 0.95), weight decay 0.05 (not on biases, norms,
    the cls and mask tokens), linear warm-up then half-cycle cosine decay of the learning rate (train.py).
  * representation (Sec. 4, linear probing): the encoder on the whole, UNMASKED image; features are the mean of
    its patch tokens (default), its cls token, or both (features).

Conventions: images in [-1, 1], shape (B, C, H, W); patch order is row-major over the (H/p, W/p) grid and each
patch vector is ordered (p_row, p_col, channel), as in the official code; masks are (B, L) float with 1 = masked,
0 = visible; ids_shuffle holds the visible patches first; the loss is a mean over masked patches and pixels.

Deviations:
  * Sized for a CPU: 28x28 images, patch 4 (L = 49, K = 12 at r = 0.75), encoder width 128, depth 4, 4 heads;
    decoder width 64, depth 2 (the paper: 224x224, patch 16, ViT-B/L/H, decoder 512 wide, 8 deep).
  * The patch embedding is a Linear layer on patchify()'d pixels (the paper's code uses a stride-p conv, the
    same linear map), applied after the visible patches are picked (the official code embeds all L, then drops
    the masked ones: the same result, with no embedding work on hidden patches).
  * --norm-pix-loss is off by default (the paper's default is on): with it, the decoder predicts normalised
    patches, so showing a reconstruction needs each masked patch's true mean and variance, which an inpainting
    user does not have. Reconstructions of a norm-pix model are un-normalised with the true patch statistics
    and labelled so (reconstruct).
  * No data augmentation (the paper: random resized crops and flips); MNIST digits are centred.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = ("mean", "cls", "mean+cls", "blocks", "tokens")


@dataclass
class Config:
    image_size: int = 28  # H = W, a multiple of patch_size
    channels: int = 1  # image channels (1 grayscale, 3 RGB)
    patch_size: int = 4  # p: patches are p x p pixels
    dim: int = 128  # encoder width
    depth: int = 4  # encoder transformer blocks
    heads: int = 4  # encoder attention heads
    decoder_dim: int = 64  # decoder width (light: about a third of the encoder's FLOPs per token or less)
    decoder_depth: int = 2  # decoder transformer blocks
    decoder_heads: int = 4  # decoder attention heads
    mlp_ratio: float = 4.0  # hidden width of each block's MLP, as a multiple of its width
    mask_ratio: float = 0.75  # r: share of patches masked in training (the paper's default)
    norm_pix_loss: bool = False  # targets normalised per patch (paper's Table 1c "w/ norm")

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"--image-size {self.image_size} must be a multiple of --patch-size {self.patch_size}")
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise ValueError("--dim must be a multiple of --heads and --decoder-dim of --decoder-heads")
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")

    @property
    def grid(self) -> int:
        """Patches per side, H / p."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """L = (H / p)^2."""
        return self.grid ** 2

    @property
    def patch_dim(self) -> int:
        """Pixels per patch, p * p * C."""
        return self.patch_size ** 2 * self.channels


# ---------------------------------------------------------------- patches, masks, positions

def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches row-major, each vector ordered (p_row, p_col, channel)."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W), the inverse of patchify (square images)."""
    B, L, _ = patches.shape
    h = int(math.isqrt(L))
    x = patches.reshape(B, h, h, p, p, channels)  # (B, h, w, p, q, C)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * p, h * p)


def random_masking(batch: int, num_patches: int, ratio: float, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random shuffle: (ids_shuffle (B, L) with the K = int(L (1 - r)) kept patches first, mask (B, L)).

    ids_shuffle = argsort(u), u ~ U(0, 1)^L per image; the first K indices are visible, the rest masked."""
    noise = torch.rand(batch, num_patches, generator=generator, device="cpu" if generator else device).to(device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    return ids_shuffle, mask_of(ids_shuffle, num_kept(num_patches, ratio))


def num_kept(num_patches: int, ratio: float) -> int:
    """K = int(L (1 - r)) visible patches (as the official code)."""
    return int(num_patches * (1 - ratio))


def mask_of(ids_shuffle: torch.Tensor, keep: int) -> torch.Tensor:
    """The (B, L) mask (1 = masked) of an ordering whose first `keep` patches are visible."""
    mask = torch.ones_like(ids_shuffle, dtype=torch.float32)
    mask[:, :keep] = 0
    return torch.gather(mask, 1, torch.argsort(ids_shuffle, dim=1))  # back to image order


def ordering_of(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A given (B, L) mask (1 = masked, the same count per image) -> (ids_shuffle, keep): visible patches first."""
    keep = int((mask[0] == 0).sum())
    if not bool(((mask == 0).sum(1) == keep).all()):
        raise ValueError("every image of a batch needs the same number of visible patches")
    return torch.argsort(mask.float(), dim=1, stable=True), keep


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Transformer sin-cos embedding (Vaswani et al. 2017) of positions (M,) -> (M, dim): [sin(pos w), cos(pos w)],
    w_k = 1 / 10000^(2k / dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos positional embedding (1 + grid^2, dim): half the channels encode the row, half the
    column; row 0 (the cls token) is zeros."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    pos = torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())], dim=1)  # (L, dim)
    return torch.cat([torch.zeros(1, dim), pos])


# ---------------------------------------------------------------- building blocks

class Attention(nn.Module):
    """Multi-head self-attention over (B, N, D) tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (GELU)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """As the official code: xavier-uniform Linear weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- networks

class Encoder(nn.Module):
    """ViT on the visible patches: (B, L, p*p*C) patches + ids_shuffle + keep -> (B, 1 + K, dim) tokens (cls first)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.register_buffer("pos_embed", sincos_2d(cfg.dim, cfg.grid)[None], persistent=False)  # (1, 1 + L, dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.apply(init_weights)
        w = self.patch_embed.weight.data  # the official code: xavier on the conv weight viewed as a matrix
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, patches: torch.Tensor, ids_shuffle: torch.Tensor | None = None, keep: int | None = None,
                every_block: bool = False) -> torch.Tensor | list[torch.Tensor]:
        pos = self.pos_embed[:, 1:].expand(patches.shape[0], -1, -1)  # (B, L, dim)
        if ids_shuffle is not None:  # only the visible patches go on, (B, K, p*p*C), before any compute on them
            ids_keep = ids_shuffle[:, :keep, None]
            patches = torch.gather(patches, 1, ids_keep.expand(-1, -1, patches.shape[2]))
            pos = torch.gather(pos, 1, ids_keep.expand(-1, -1, pos.shape[2]))
        x = self.patch_embed(patches) + pos  # (B, K, dim)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + K, dim)
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return [*outputs[:-1], self.norm(x)] if every_block else self.norm(x)  # every_block: each block's output


class Decoder(nn.Module):
    """Encoded tokens (B, 1 + K, dim) + ids_shuffle -> predicted patches (B, L, p*p*C) for every position."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("pos_embed", sincos_2d(cfg.decoder_dim, cfg.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.pred = nn.Linear(cfg.decoder_dim, cfg.patch_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, ids_shuffle: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (B, 1 + K, D_dec)
        B, L = ids_shuffle.shape
        cls, visible = x[:, :1], x[:, 1:]
        masks = self.mask_token.expand(B, L - visible.shape[1], -1).to(x.dtype)  # (B, L - K, D_dec)
        shuffled = torch.cat([visible, masks], dim=1)  # (B, L, D_dec) in shuffled order: visible, then masked
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # unshuffle: back to image order
        x = torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + L, D_dec)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]  # drop cls: (B, L, p*p*C)


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder. forward(images, ids_shuffle, keep) -> predicted patches (B, L, p*p*C)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    def forward(self, images: torch.Tensor, ids_shuffle: torch.Tensor, keep: int) -> torch.Tensor:
        patches = patchify(images, self.cfg.patch_size)  # (B, L, p*p*C)
        return self.decoder(self.encoder(patches, ids_shuffle, keep), ids_shuffle)


# ---------------------------------------------------------------- objective

def patch_targets(images: torch.Tensor, cfg: Config) -> torch.Tensor:
    """t: the patches (B, L, p*p*C), normalised per patch with cfg.norm_pix_loss: (x - mu_i) / sqrt(var_i + 1e-6)."""
    target = patchify(images.float(), cfg.patch_size)
    if cfg.norm_pix_loss:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return target


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L = sum_i m_i mean_j (pred_ij - t_ij)^2 / sum_i m_i: the MSE over masked patches only (MAE Sec. 3)."""
    per_patch = (pred.float() - target).square().mean(-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum()


def mae_loss(model: nn.Module, cfg: Config, images: torch.Tensor, ratio: float | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training objective on a fresh random mask: (loss, pred (B, L, p*p*C), mask (B, L)).
    `model` may be the DDP wrapper of a MaskedAutoencoder; cfg is its Config."""
    ratio = cfg.mask_ratio if ratio is None else ratio
    ids_shuffle, mask = random_masking(images.shape[0], cfg.num_patches, ratio, images.device, generator)
    pred = model(images, ids_shuffle, num_kept(cfg.num_patches, ratio))
    return masked_patch_loss(pred, patch_targets(images, cfg), mask), pred, mask


# ---------------------------------------------------------------- reconstruction and features

@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, C, H, W) in [-1, 1] and a mask (B, L), 1 = hidden -> (reconstruction, pasted), each (B, C, H, W):
    the decoder's prediction of every patch, and the same with the visible patches replaced by the input's.

    With norm_pix_loss the decoder predicts normalised patches; they are mapped back with the TRUE mean and
    variance of each patch of `images` (the paper's visualisations use a model without it)."""
    cfg = model.cfg
    ids_shuffle, keep = ordering_of(mask)
    pred = model(images, ids_shuffle, keep).float()  # (B, L, p*p*C)
    if cfg.norm_pix_loss:
        target = patchify(images.float(), cfg.patch_size)
        pred = pred * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
    rec = unpatchify(pred, cfg.patch_size, cfg.channels).clamp(-1, 1)
    return rec, paste(images, rec, mask, cfg.patch_size)


def mask_image(mask: torch.Tensor, p: int, size: int) -> torch.Tensor:
    """(B, L) patch mask -> (B, 1, H, W) pixel mask, 1 on the hidden pixels."""
    grid = int(math.isqrt(mask.shape[1]))
    m = mask.view(-1, 1, grid, grid)
    return F.interpolate(m, size=(size, size), mode="nearest") if p * grid == size else m


def paste(images: torch.Tensor, rec: torch.Tensor, mask: torch.Tensor, p: int) -> torch.Tensor:
    """The reconstruction inside the hidden patches, the input's pixels in the visible ones."""
    m = mask_image(mask.to(images.dtype), p, images.shape[-1])
    return images * (1 - m) + rec * m


def box_mask(box: tuple[int, int, int, int], cfg: Config) -> torch.Tensor:
    """(1, L) mask hiding every patch that overlaps the pixel box (x0, y0, x1, y1), x1 and y1 exclusive."""
    x0, y0, x1, y1 = box
    p, idx = cfg.patch_size, torch.arange(cfg.grid)
    cols = (idx * p < x1) & ((idx + 1) * p > x0)  # patch columns overlapping [x0, x1)
    rows = (idx * p < y1) & ((idx + 1) * p > y0)
    return (rows[:, None] & cols[None, :]).float().view(1, -1)


@torch.no_grad()
def features(encoder: Encoder, images: torch.Tensor, kind: str = "mean") -> torch.Tensor:
    """Frozen representation of UNMASKED images (B, C, H, W) -> (B, D), from the tokens after the final LayerNorm:
      mean      the mean of the patch tokens (the paper's global pooling), D = dim
      cls       the cls token (the paper's linear-probe choice), D = dim
      mean+cls  both, D = 2 dim
      blocks    the mean patch token of every block's output, each LayerNorm'd (no affine), D = depth x dim
      tokens    every patch token, concatenated in patch order (no pooling), D = L x dim"""
    outputs = encoder(patchify(images, encoder.cfg.patch_size), every_block=kind == "blocks")  # nothing masked
    if kind == "blocks":
        return torch.cat([F.layer_norm(h, h.shape[-1:])[:, 1:].mean(1) for h in outputs], dim=1).float()
    tokens = outputs  # (B, 1 + L, dim)
    parts = {"mean": [tokens[:, 1:].mean(1)], "cls": [tokens[:, 0]], "mean+cls": [tokens[:, 1:].mean(1), tokens[:, 0]],
             "tokens": [tokens[:, 1:].flatten(1)]}[kind]
    return torch.cat(parts, dim=1).float()
