"""ConditionalGAN: class-conditional image generation with a projection discriminator (or AC-GAN).

Mirza & Osindero, "Conditional Generative Adversarial Nets", 2014. https://arxiv.org/abs/1411.1784
Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018. https://arxiv.org/abs/1802.05637
Odena, Olah & Shlens, "Conditional Image Synthesis with Auxiliary Classifier GANs", ICML 2017.
https://arxiv.org/abs/1610.09585
Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018.
https://arxiv.org/abs/1802.05957

The conditional game (Mirza & Osindero Eq. 2): G and D both see the label y,
    min_G max_D  E_{x,y}[log D(x|y)] + E_{z,y}[log(1 - D(G(z|y)|y))].

Generator: y enters through class-conditional BatchNorm (the G of Miyato & Koyama): every BatchNorm has
per-class gain and bias, h -> gamma_y * BN(h) + beta_y, so the label modulates every layer of G.

Discriminator, two options (`conditioning`):
  * "projection" (default). D's optimum is the log density ratio, which splits as (Miyato & Koyama Eq. 2)
        f*(x, y) = log q(y|x)/p(y|x) + log q(x)/p(x) = r(y|x) + r(x),
    and with log-linear class posteriors on a feature map phi(x) both parts are linear in phi (Eq. 3):
        f(x, y) = y^T V phi(x) + psi(phi(x))                                    (Discriminator.forward)
    i.e. the logit is an unconditional head psi plus the inner product of the class embedding v_y with phi(x).
  * "acgan". D predicts the source and the class, P(S|X), P(C|X) = D(X) (Odena et al. Eq. 1), with
        L_S = E[log P(S = real | X_real)] + E[log P(S = fake | X_fake)]         (Eq. 2)
        L_C = E[log P(C = c | X_real)] + E[log P(C = c | X_fake)]               (Eq. 3)
    D maximises L_S + L_C, G maximises L_C - L_S. D itself never sees y.

Adversarial loss (`loss`): "hinge", as in Miyato & Koyama's experiments (from Lim & Ye 2017, Geometric GAN),
    L_D = E[max(0, 1 - D(x, y))] + E[max(0, 1 + D(G(z, y), y))],   L_G = -E[D(G(z, y), y)],
or "bce", the log-likelihood form of Mirza & Osindero Eq. 2 / Odena Eq. 2 with G's non-saturating loss
-log sigma(D(G(z, y), y)).

Why projection is the default: it puts the label where the paper's analysis says it belongs (the r(y|x) term),
it adds one embedding and no extra loss to tune, and unlike AC-GAN it does not reward G for drawing the easiest
-to-classify image of a class (AC-GAN's class term on fakes is known to reduce within-class diversity; Miyato &
Koyama compare the two and report better quality for projection). AC-GAN stays one flag away for comparison.

Spectral normalisation (Miyato et al. 2018): every weight of D (convolutions, psi, the embedding V and the
AC-GAN class head) is divided by its largest singular value, estimated with one power iteration per forward
pass in training mode; D then has no BatchNorm. This is what Miyato & Koyama use with the projection D.

Conventions: images in [-1, 1], shape (B, C, H, W); labels y int64 in 0..K-1; losses are means over the batch.

Deviations:
  * The networks are DCGAN-sized (Radford et al. 2016: transposed convolutions in G, strided 4x4 convolutions
    in D) instead of the papers' ResNets, so a 2-core CPU trains them in minutes; phi(x) is D's last 4x4
    feature map flattened (Miyato & Koyama sum-pool a ResNet's features), so psi is DCGAN's final 4x4 conv.
  * One D update per G update by default; the authors' code updates D five times (n_dis 5, train.py --d-steps 5),
    which costs steps a CPU budget cannot spare (the comparison is in EXPERIMENTS.md).
  * z ~ N(0, I); the AC-GAN generator uses the non-saturating -log sigma(D(G(z))) in place of the saturating
    -L_S term (the usual practice since Goodfellow et al. Sec. 3); the class loss weight is a flag (paper: 1).
  * Spectral normalisation is also applied to the AC-GAN discriminator (the paper used BatchNorm and dropout).
  * Additions from later work. D learns twice as fast as G by default (train.py --lr-d 4e-4 against --lr 2e-4, the
    two time-scale update rule of Heusel et al. 2017; its measured effect is in the README and EXPERIMENTS.md).
    Optionally (train.py --ema, off by default) samples and evaluation use an exponential moving average of G's
    weights, theta_ema <- beta theta_ema + (1 - beta) theta after every G step (ema_update; Karras et al. 2018,
    Yazici et al. 2019). Neither changes the game, only how it is played and read out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

CONDITIONINGS = ("projection", "acgan")
LOSSES = ("hinge", "bce")


@dataclass
class Config:
    image_size: int = 32  # H = W, a power of two >= 16
    channels: int = 3  # image channels (3 RGB, 1 grayscale)
    num_classes: int = 10  # K, the number of labels y can take
    z_dim: int = 128  # latent dimension
    g_width: int = 32  # G's channels just before the output layer
    d_width: int = 32  # D's channels after the input layer
    conditioning: str = "projection"  # how D uses y: projection (Miyato & Koyama) | acgan (Odena et al.)
    spectral_norm: bool = True  # spectrally normalise every weight of D (Miyato et al. 2018)

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ValueError(f"ConditionalGAN needs --image-size a power of two >= 16, got {self.image_size}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"--conditioning must be one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}")
        if self.num_classes < 2:
            raise ValueError(f"a conditional GAN needs at least 2 classes, got {self.num_classes}")

    @property
    def num_layers(self) -> int:
        """Stride-2 layers between 4x4 and image_size."""
        return int(math.log2(self.image_size)) - 2


# ---------------------------------------------------------------- building blocks

class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; per-class gain and bias: gamma_y * BN(h) + beta_y (Miyato & Koyama)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)  # initialised to 1 (identity), see init_weights
        self.beta = nn.Embedding(num_classes, channels)  # initialised to 0

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gamma(y)[:, :, None, None], self.beta(y)[:, :, None, None]  # (B, C, 1, 1)
        return gamma * self.bn(h) + beta


class UpBlock(nn.Module):
    """Transposed conv (stride s) -> class-conditional BatchNorm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, num_classes: int, stride: int = 2, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=stride, padding=padding, bias=False)
        self.norm = ConditionalBatchNorm2d(c_out, num_classes)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(h), y))


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """The module initialised by init_weights, then spectrally normalised if enabled (W / sigma(W), sigma from
    one power iteration per training forward). Init first: afterwards .weight is a computed tensor."""
    init_weights(module)
    return spectral_norm(module) if enabled else module


def init_weights(module: nn.Module) -> None:
    """Weights ~ N(0, 0.02) (DCGAN Sec. 4); conditional BatchNorm starts as the identity (gamma 1, beta 0)."""
    if isinstance(module, ConditionalBatchNorm2d):
        nn.init.ones_(module.gamma.weight)
        nn.init.zeros_(module.beta.weight)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- networks

# Adapted from DCGAN/model.py (Generator): BatchNorm -> class-conditional BatchNorm, forward takes y.
class Generator(nn.Module):
    """G: z (B, z_dim), y (B,) -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.g_width * 2 ** i for i in reversed(range(cfg.num_layers))]  # e.g. [128, 64, 32] at 32x32
        self.project = UpBlock(cfg.z_dim, widths[0], cfg.num_classes, stride=1, padding=0)  # 1x1 -> 4x4
        self.body = nn.ModuleList([UpBlock(a, b, cfg.num_classes) for a, b in zip(widths[:-1], widths[1:])])
        self.to_image = nn.ConvTranspose2d(widths[-1], cfg.channels, kernel_size=4, stride=2, padding=1, bias=False)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.project(z.view(z.shape[0], -1, 1, 1), y)  # (B, z_dim, 1, 1) -> (B, 4g, 4, 4)
        for block in self.body:
            h = block(h, y)
        return torch.tanh(self.to_image(h))


# Adapted from DCGAN/model.py (Discriminator): spectral norm instead of BatchNorm, projection / AC-GAN heads.
class Discriminator(nn.Module):
    """D: image (B, C, H, W), y (B,) -> (logit (B,), class logits (B, K) for acgan else None)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        sn = cfg.spectral_norm
        widths = [cfg.d_width * 2 ** i for i in range(cfg.num_layers)]  # e.g. [32, 64, 128] at 32x32
        layers: list[nn.Module] = []
        for c_in, c_out in zip([cfg.channels] + widths[:-1], widths):
            layers += [maybe_sn(nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), sn),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.phi = nn.Sequential(*layers, nn.Flatten())  # phi(x): (B, widths[-1] * 4 * 4)
        features = widths[-1] * 4 * 4
        self.psi = maybe_sn(nn.Linear(features, 1), sn)  # the unconditional term psi(phi(x))
        if cfg.conditioning == "projection":
            self.embed = maybe_sn(nn.Embedding(cfg.num_classes, features), sn)  # V: row v_y per class
        else:
            self.classify = maybe_sn(nn.Linear(features, cfg.num_classes), sn)  # logits of P(C | X)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        phi = self.phi(x)  # (B, F)
        logit = self.psi(phi).squeeze(1)  # (B,)
        if self.cfg.conditioning == "projection":
            return logit + (self.embed(y) * phi).sum(1), None  # Eq. 3: psi(phi(x)) + v_y^T phi(x)
        return logit, self.classify(phi)


# ---------------------------------------------------------------- objective

def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[max(0, 1 - D(x, y))] + E[max(0, 1 + D(G(z, y), y))] (hinge loss, Lim & Ye 2017)."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z, y), y)]."""
    return -fake_logits.float().mean()


def source_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-L_S (Odena Eq. 2) = -E[log sigma(D(x))] - E[log(1 - sigma(D(G(z))))], the negated Mirza & Osindero Eq. 2."""
    return -(F.logsigmoid(real_logits.float()).mean() + F.logsigmoid(-fake_logits.float()).mean())


def non_saturating_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[log sigma(D(G(z, y)))] (Goodfellow et al. 2014, Sec. 3)."""
    return -F.logsigmoid(fake_logits.float()).mean()


def class_loss(class_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-E[log P(C = y | X)]: one half of -L_C (Odena Eq. 3), the cross-entropy of D's class head."""
    return F.cross_entropy(class_logits.float(), y)


def discriminator_loss(real: tuple, fake: tuple, y: torch.Tensor, loss: str = "hinge",
                       class_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """D's loss from D's outputs (logit, class logits) on real and fake images of labels y; and its terms.

    projection: the adversarial loss alone (y is inside the logit). acgan: adversarial (-L_S for bce) plus
    class_weight * -L_C, the class cross-entropy on real and on fake images (D maximises L_S + L_C).
    """
    adversarial = (hinge_discriminator_loss if loss == "hinge" else source_loss)(real[0], fake[0])
    if real[1] is None:
        return adversarial, {"loss_d_adv": adversarial.item()}
    classes = class_loss(real[1], y) + class_loss(fake[1], y)  # -L_C
    return adversarial + class_weight * classes, {"loss_d_adv": adversarial.item(), "loss_d_class": classes.item()}


def generator_loss(fake: tuple, y: torch.Tensor, loss: str = "hinge",
                   class_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """G's loss from D's outputs on G(z, y); acgan adds class_weight * -E[log P(C = y | G(z, y))] (G maximises L_C)."""
    adversarial = (hinge_generator_loss if loss == "hinge" else non_saturating_generator_loss)(fake[0])
    if fake[1] is None:
        return adversarial, {"loss_g_adv": adversarial.item()}
    classes = class_loss(fake[1], y)
    return adversarial + class_weight * classes, {"loss_g_adv": adversarial.item(), "loss_g_class": classes.item()}


# ---------------------------------------------------------------- moving average of G

@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> float:
    """theta_ema <- beta theta_ema + (1 - beta) theta for every parameter, with beta = min(decay, (1 + step) /
    (10 + step)) so the early average is not dominated by the random initialisation; buffers (BatchNorm's running
    statistics) are copied, since they describe the raw G's activations. Returns the beta used."""
    beta = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
    return beta


# ---------------------------------------------------------------- sampling

@torch.no_grad()
def sample(generator: Generator, labels: torch.Tensor, z: torch.Tensor | None = None,
           rng: torch.Generator | None = None, batch_size: int = 256) -> torch.Tensor:
    """Images (n, C, H, W) in [-1, 1] of the given labels (n,), from z ~ N(0, I) (or the given z (n, z_dim))."""
    device = next(generator.parameters()).device
    if z is None:
        z = torch.randn(len(labels), generator.cfg.z_dim, generator=rng)
    return torch.cat([generator(zc.to(device), yc.to(device))
                      for zc, yc in zip(z.split(batch_size), labels.long().split(batch_size))])


@torch.no_grad()
def sample_any_class(generator: Generator, n: int, rng: torch.Generator | None = None) -> torch.Tensor:
    """n images with labels drawn uniformly from the K classes: a sample of the whole data distribution."""
    labels = torch.randint(generator.cfg.num_classes, (n,), generator=rng)
    return sample(generator, labels, rng=rng)


@torch.no_grad()
def class_grid(generator: Generator, classes: list[int], columns: int,
               rng: torch.Generator | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
    """A class-by-row grid: row i holds class classes[i]; column j shares one z across rows, so a column shows
    what the label changes with the rest held fixed. Returns (len(classes) * columns, C, H, W), row-major."""
    if z is None:
        z = torch.randn(columns, generator.cfg.z_dim, generator=rng)
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(columns)  # (rows * columns,)
    return sample(generator, labels, z=z.repeat(len(classes), 1))
