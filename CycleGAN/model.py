"""CycleGAN: unpaired image-to-image translation with cycle-consistent adversarial networks.

Zhu, Park, Isola & Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks",
ICCV 2017. https://arxiv.org/abs/1703.10593 (official code: https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix)

Two domains A and B (the paper's X and Y) and no pairs. Two generators G_AB: A -> B and G_BA: B -> A (the paper's
G and F) and two discriminators, D_B judging B images (the paper's D_Y) and D_A judging A images (D_X).

Adversarial loss (Eq. 1), in its least-squares form (Sec. 4, "Training details", after Mao et al. 2017):
    D_B minimises   1/2 [ E_b (D_B(b) - 1)^2 + E_a D_B(G_AB(a))^2 ]                    (lsgan_d_loss)
    G_AB minimises      E_a (D_B(G_AB(a)) - 1)^2                                     (lsgan_g_loss)
and the same for G_BA and D_A. D's loss is halved, "which slows down the rate at which D learns" (Sec. 4).
Cycle consistency (Eq. 2), L1:
    L_cyc = E_a |G_BA(G_AB(a)) - a|_1 + E_b |G_AB(G_BA(b)) - b|_1                     (cycle_loss)
Full objective (Eq. 3):  L = L_GAN(G_AB, D_B) + L_GAN(G_BA, D_A) + lambda L_cyc,  lambda = 10.
Identity loss (Sec. 5.2, "Photo generation from paintings", after Taigman et al. 2017), weight 0.5 lambda as in
the official code (--lambda_identity 0.5):
    L_idt = E_b |G_AB(b) - b|_1 + E_a |G_BA(a) - a|_1                                  (identity_loss)
So G_AB and G_BA together minimise  L_GAN + L_GAN + 10 L_cyc + 5 L_idt.

Training details (Sec. 4 and Appendix 7.1), all followed here: D is updated on a history of generated images, a
pool of the 50 latest fakes per discriminator (Shrivastava et al. 2017; ImagePool: once full, each query returns
a stored fake with probability 1/2, swapping the new one in); Adam(lr 2e-4, betas (0.5, 0.999)); the learning
rate is constant for the first half of training and decays linearly to zero over the second (lr_factor; the
paper: 100 + 100 epochs); weights ~ N(0, 0.02).

Architecture (Appendix 7.2). Generator (Johnson et al. 2016), for 128x128 images with 6 residual blocks:
    c7s1-64, d128, d256, R256 x 6, u128, u64, c7s1-3
c7s1-k: 7x7 conv, stride 1, k filters, InstanceNorm, ReLU; dk: 3x3 conv stride 2, IN, ReLU; Rk: residual block
of two 3x3 convs (x + IN(conv(ReLU(IN(conv(x)))))); uk: 3x3 fractional-strided conv stride 1/2, IN, ReLU; the
last c7s1-3 has no norm and a tanh. Reflection padding everywhere a conv keeps the size (7x7 and the R blocks).
Discriminator: the 70x70 PatchGAN C64-C128-C256-C512 (4x4 conv, IN, LeakyReLU 0.2; no IN on C64; C512 stride 1
as in the official code), then a 4x4 conv to one channel: one real/fake score per 70x70 input patch.

Conventions: images in [-1, 1], shape (B, C, H, W); every loss is a mean over pixels (or patches) and the batch;
InstanceNorm without learnt affine parameters (the official code's default).

Deviations:
  * Narrower, shallower networks by default (train.py: g_width 16, 3 residual blocks, d_width 32) so a 2-core
    CPU trains 32x32 images in 10 minutes; the paper's 128x128 model is `--g-width 64 --n-blocks 6 --d-width 64`
    (9 blocks at 256x256). Config's defaults are the paper's.
  * The PatchGAN is scaled to the image size: d_layers strided layers (the paper's 70x70 net has 3) chosen so its
    receptive field covers about the same share of the image as 70 px of the paper's 128 px (0.55): 16 px at
    32x32 (d_layers 1), 34 px at 64x64 (2), 70 px at 128x128 and above (3). receptive_field() computes it.
  * Batches of 8 instead of 1 (InstanceNorm makes each image's normalisation independent of the batch, so only
    the gradient noise changes); the pool is queried image by image as in the official code. train.py's lr is
    1e-3, not 2e-4: in the short CPU budget the generators learn even the identity too slowly at 2e-4
    (EXPERIMENTS.md); `--lr 2e-4` is the paper's.
  * The learning-rate schedule runs on the fraction of training done: of --steps, or of --minutes when the run is
    minutes-bound (whichever is further along), so a 10-minute run also decays to zero at its end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Config:
    image_size: int = 128  # H = W, a multiple of 4 (two stride-2 layers in G)
    channels: int = 3  # image channels of both domains (3 RGB, 1 grayscale)
    g_width: int = 64  # filters of G's first c7s1 layer (the paper's 64; d and R layers have 2x and 4x)
    n_blocks: int = 6  # residual blocks in G (paper: 6 at 128x128, 9 at 256x256)
    d_width: int = 64  # filters of D's first layer (the paper's C64)
    d_layers: int = 3  # stride-2 layers of the PatchGAN (3 = the paper's 70x70 PatchGAN)

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 4:
            raise ValueError(f"CycleGAN needs --image-size a multiple of 4 and >= 16, got {self.image_size}")
        if min(self.g_width, self.d_width, self.d_layers) < 1 or self.n_blocks < 0:
            raise ValueError("--g-width, --d-width and --d-layers must be >= 1 and --n-blocks >= 0")
        if self.image_size // 2 ** self.d_layers < 2:
            raise ValueError(f"--d-layers {self.d_layers} halves a {self.image_size}-px image below 2 px")


def d_layers_for(image_size: int) -> int:
    """PatchGAN depth whose receptive field is ~0.55 of the image side (70 px of 128, the paper's ratio)."""
    return max(1, min(3, int(math.log2(image_size)) - 4))  # 32 -> 1 (16 px), 64 -> 2 (34 px), >=128 -> 3 (70 px)


def receptive_field(d_layers: int) -> int:
    """Receptive field in pixels of one PatchGAN output: 4x4 convs, d_layers of stride 2, then two of stride 1."""
    rf = 1
    for stride in reversed([2] * d_layers + [1, 1]):  # walk back from the output: rf' = (rf - 1) * stride + 4
        rf = (rf - 1) * stride + 4
    return rf


# ---------------------------------------------------------------- building blocks

def conv_norm_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """c7s1-k (kernel 7, reflection-padded) or dk (kernel 3, stride 2, zero-padded): conv, InstanceNorm, ReLU."""
    pad = [nn.ReflectionPad2d(kernel // 2)] if stride == 1 else []
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=0 if stride == 1 else kernel // 2)
    return nn.Sequential(*pad, conv, nn.InstanceNorm2d(c_out), nn.ReLU(inplace=True))


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """uk: 3x3 fractional-strided conv doubling H and W, InstanceNorm, ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1),
                         nn.InstanceNorm2d(c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Rk: x + IN(conv3(pad(ReLU(IN(conv3(pad(x))))))), reflection padding, k channels in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def init_weights(module: nn.Module) -> None:
    """Appendix 7.1: weights ~ N(0, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- networks

class Generator(nn.Module):
    """c7s1-w, d2w, d4w, R4w x n_blocks, u2w, uw, c7s1-C: image (B, C, H, W) -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.g_width
        self.body = nn.Sequential(
            conv_norm_relu(cfg.channels, w, kernel=7, stride=1),  # c7s1-w        (B, w, H, W)
            conv_norm_relu(w, 2 * w, kernel=3, stride=2),  # d2w                  (B, 2w, H/2, W/2)
            conv_norm_relu(2 * w, 4 * w, kernel=3, stride=2),  # d4w              (B, 4w, H/4, W/4)
            *[ResidualBlock(4 * w) for _ in range(cfg.n_blocks)],  # R4w x n
            up_block(4 * w, 2 * w),  # u2w                                        (B, 2w, H/2, W/2)
            up_block(2 * w, w),  # uw                                             (B, w, H, W)
            nn.ReflectionPad2d(3), nn.Conv2d(w, cfg.channels, 7))  # c7s1-C, no norm, tanh below
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(x))


class PatchDiscriminator(nn.Module):
    """PatchGAN: image (B, C, H, W) -> real/fake scores (B, 1, h, w), one per receptive_field(d_layers)^2 patch.

    C_w (no norm), C_2w, ... with stride 2 (d_layers of them, widths capped at 8w), one more stride-1 C layer,
    then a stride-1 4x4 conv to one channel. No sigmoid: the least-squares loss reads the raw score.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.d_width * min(2 ** i, 8) for i in range(cfg.d_layers + 1)]  # e.g. 64, 128, 256, 512
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, widths[0], 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        for i in range(1, cfg.d_layers + 1):
            stride = 2 if i < cfg.d_layers else 1  # the last C layer keeps the size (official code)
            layers += [nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1),
                       nn.InstanceNorm2d(widths[i]), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.body = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# ---------------------------------------------------------------- the image history pool

class ImagePool:
    """The history of generated images D trains on (Sec. 4; Shrivastava et al. 2017), one per discriminator.

    query(fakes) goes image by image: while fewer than `size` are stored, the fake is stored and returned;
    once full, with probability 1/2 a uniformly chosen stored image is returned and the fake takes its place,
    otherwise the fake itself is returned. Its own torch.Generator makes the choices, so resume is exact.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []  # each (C, H, W), detached
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) fakes -> (B, C, H, W) images for D, detached."""
        if self.size == 0:
            return fakes.detach()
        out = []
        for image in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.rng) < 0.5:
                i = int(torch.randint(self.size, (), generator=self.rng))
                out.append(self.images[i])
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        stored = torch.stack(self.images).cpu() if self.images else torch.empty(0)
        return {"images": stored, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.images = [image.to(device) for image in state["images"]]
        self.rng.set_state(state["rng"])


# ---------------------------------------------------------------- objective

def lsgan_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares D loss, halved (Sec. 4): 1/2 [E (D(real) - 1)^2 + E D(fake)^2]."""
    return 0.5 * ((real_scores.float() - 1).pow(2).mean() + fake_scores.float().pow(2).mean())


def lsgan_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares G loss (Sec. 4): E (D(G(x)) - 1)^2, G pushes its fakes' scores to the 'real' target 1."""
    return (fake_scores.float() - 1).pow(2).mean()


def cycle_loss(a: torch.Tensor, rec_a: torch.Tensor, b: torch.Tensor, rec_b: torch.Tensor) -> torch.Tensor:
    """Eq. 2: E|G_BA(G_AB(a)) - a|_1 + E|G_AB(G_BA(b)) - b|_1 with rec_a = G_BA(G_AB(a)), rec_b = G_AB(G_BA(b))."""
    return (rec_a.float() - a.float()).abs().mean() + (rec_b.float() - b.float()).abs().mean()


def identity_loss(a: torch.Tensor, idt_a: torch.Tensor, b: torch.Tensor, idt_b: torch.Tensor) -> torch.Tensor:
    """Sec. 5.2: E|G_BA(a) - a|_1 + E|G_AB(b) - b|_1 with idt_a = G_BA(a), idt_b = G_AB(b): a generator fed an
    image of its target domain should leave it alone (it keeps colours from drifting)."""
    return (idt_a.float() - a.float()).abs().mean() + (idt_b.float() - b.float()).abs().mean()


def lr_factor(progress: float, decay_start: float = 0.5) -> float:
    """The paper's schedule on the fraction of training done, progress in [0, 1]: 1 until decay_start, then
    linear to 0 at progress 1 (paper: 100 epochs at 2e-4, then 100 decaying to 0, i.e. decay_start = 0.5)."""
    if progress <= decay_start:
        return 1.0
    return max(0.0, (1.0 - progress) / (1.0 - decay_start))


# ---------------------------------------------------------------- translation

@torch.no_grad()
def translate(generator: Generator, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] through a generator, in batches, on the generator's device -> (N, C, H, W)."""
    device = next(generator.parameters()).device
    return torch.cat([generator(chunk.to(device)).cpu() for chunk in images.split(batch_size)])
