"""Why DCGAN draws blobs on `shapes`: train on shapes with some factors held fixed, with an R1 penalty, with
G told every factor, or with G trained by regression instead of a discriminator.

A diagnostic, not a training script (no checkpoints, no resume): it runs the same G, D, losses and Adam
settings as train.py's defaults for a wall-clock budget on shapes re-rendered so that only the factors named
in --vary change (the others sit at their middle level), optionally keeping only every --every-th level of
scale, rotation, x and y, and optionally adding Mescheder et al.'s (2018) R1 penalty (gamma / 2) E||grad D(x)||^2
on real images to D's loss. Two modes take the factor vector y (one-hot per factor, 38 entries) as input:
  --given-factors  G(z, y) and a projection D (Miyato & Koyama 2018): D(x, y) = D(x) + <W y, phi(x)>, with phi
                   D's last feature map summed over space; fakes get factors drawn like the data's. G then
                   knows exactly which shape to draw; only the adversarial signal says how.
  --mse            no D at all: G(y) regresses the image with a pixel MSE (a decoder from the factors). Same G,
                   same Adam; it shows what G's architecture can draw in the budget.
It writes a grid of 64 outputs (fixed noise) -- in the two factor modes, followed by the 64 real images with
the same factors -- and prints the step count and D(G(z)) or the MSE; --snapshot-minutes also writes the grid
every so many minutes of the run. Results: EXPERIMENTS.md, "Why shapes stay blobs".
Run from inside DCGAN/ (train.py --r1 applies the same R1 penalty in a full training run):

    python experiments/shapes_ablation.py --vary shape,rotation --minutes 4   # 17 distinct images
    python experiments/shapes_ablation.py --vary shape,colour,scale,rotation  # 510: position fixed
    python experiments/shapes_ablation.py --every 2                           # every factor, half the levels: 2,592
    python experiments/shapes_ablation.py --r1 1 --r1-every 4 --minutes 10    # all of shapes, R1 penalty
    python experiments/shapes_ablation.py --r1 1 --r1-every 4 --minutes 100 --threads 2 --snapshot-minutes 20
    python experiments/shapes_ablation.py --given-factors                     # G and D see every factor
    python experiments/shapes_ablation.py --mse                               # G as a decoder of the factors
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run from inside DCGAN/ as `python experiments/shapes_ablation.py`: the folder above holds model.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import save_image

from model import Config, Discriminator, Generator, discriminator_loss, generator_loss, r1_penalty, sample
from shared import shapes
from shared.data import to_float


def ablated_factors(vary: list[str], every: int, n: int, seed: int) -> torch.Tensor:
    """(n, 6) factor levels: those outside `vary` sit at their middle level; others keep every `every`-th level."""
    factors = shapes.sample_factors(n, torch.Generator().manual_seed(seed))
    for i, (name, size) in enumerate(zip(shapes.FACTOR_NAMES, shapes.FACTOR_SIZES)):
        if name not in vary:
            factors[:, i] = size // 2
        elif name not in ("shape", "colour"):
            factors[:, i] = factors[:, i] // every * every
    return factors


def ablated_shapes(vary: list[str], every: int, n: int, seed: int, image_size: int) -> torch.Tensor:
    """uint8 images of ablated_factors(vary, every, n, seed)."""
    return shapes.render(ablated_factors(vary, every, n, seed), image_size)


def one_hot(factors: torch.Tensor) -> torch.Tensor:
    """(n, 6) levels -> (n, 38) float: the six factors' one-hot codes side by side."""
    return torch.cat([F.one_hot(factors[:, i], size).float() for i, size in enumerate(shapes.FACTOR_SIZES)], 1)


class ProjectionD(nn.Module):
    """D(x, y) = D(x) + <W y, phi(x)>, phi(x) = D's last feature map summed over space (Miyato & Koyama 2018)."""

    def __init__(self, d: Discriminator, y_dim: int) -> None:
        super().__init__()
        self.d = d
        self.embed = nn.Linear(y_dim, d.to_logit.in_channels, bias=False)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.d.body(x)
        return self.d.to_logit(h).flatten() + (self.embed(y) * h.sum((2, 3))).sum(1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vary", default=",".join(shapes.FACTOR_NAMES), help="comma-separated factors that vary")
    p.add_argument("--every", type=int, default=1, help="keep every k-th level of scale, rotation, x, y")
    p.add_argument("--r1", type=float, default=0.0, help="R1 weight gamma (0 = off, as train.py)")
    p.add_argument("--r1-every", type=int, default=1, help="apply R1 every k steps, scaled by k (lazy R1)")
    p.add_argument("--given-factors", action="store_true", help="G(z, y) and a projection D(x, y)")
    p.add_argument("--mse", action="store_true", help="no D: G(y) regresses the image (pixel MSE)")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=32, help="G and D widths (train.py's default: 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=50_000, help="training images rendered (at least 64)")
    p.add_argument("--out", default="shapes_ablation.png")
    p.add_argument("--snapshot-minutes", type=float, default=0.0,
                   help="also write OUT_<k>min.png every this many minutes (0 = only the final grid)")
    args = p.parse_args(argv)
    vary = args.vary.split(",")
    if unknown := set(vary) - set(shapes.FACTOR_NAMES):
        p.error(f"unknown factors {sorted(unknown)}; choose from {', '.join(shapes.FACTOR_NAMES)}")
    if args.every < 1 or args.r1 < 0 or args.r1_every < 1 or args.snapshot_minutes < 0 or args.images < 64:
        p.error("--every and --r1-every must be >= 1, --r1 and --snapshot-minutes >= 0, --images >= 64")
    if args.given_factors and args.mse:
        p.error("choose one of --given-factors and --mse")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    factors = ablated_factors(vary, args.every, args.images, args.seed)
    images, codes = to_float(shapes.render(factors, 32)), one_hot(factors)
    print(f"{len(torch.unique(images.flatten(1), dim=0))} distinct images; varying: {', '.join(vary)}")
    y_dim = codes.shape[1] if args.given_factors or args.mse else 0
    z_dim = 0 if args.mse else Config.z_dim
    cfg = Config(image_size=32, channels=3, z_dim=z_dim + y_dim, g_width=args.width, d_width=args.width)
    fmt = torch.channels_last
    G, D = Generator(cfg).to(memory_format=fmt), Discriminator(cfg).to(memory_format=fmt)
    if args.given_factors:
        D = ProjectionD(D, y_dim)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    shown = torch.arange(64)  # the fixed grid: the factors of the first 64 images, and fixed noise
    fixed_z = torch.randn(64, z_dim, generator=torch.Generator().manual_seed(args.seed))
    fixed_input = torch.cat([fixed_z, codes[shown]], 1) if y_dim else fixed_z

    def d_logits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return D(x, y) if args.given_factors else D(x)

    def write_grid(path: Path) -> None:
        G.eval()
        grid = sample(G, 64, z=fixed_input)
        G.train()
        if y_dim:  # below the outputs, the real images with the same factors
            grid = torch.cat([grid, images[shown]])
        save_image(grid * 0.5 + 0.5, path, nrow=8, padding=1)

    out = Path(args.out)
    start, step, snapshots = time.perf_counter(), 0, 0
    while time.perf_counter() - start < args.minutes * 60:
        if args.snapshot_minutes and time.perf_counter() - start >= (snapshots + 1) * args.snapshot_minutes * 60:
            snapshots += 1
            snapshot = out.with_name(f"{out.stem}_{snapshots * args.snapshot_minutes:g}min{out.suffix}")
            write_grid(snapshot)
            print(f"step {step}: {snapshot}", flush=True)
        batch = torch.randint(len(images), (args.batch_size,))
        x, y = images[batch].contiguous(memory_format=fmt), codes[batch]
        if args.mse:  # regression: G(y) -> x; D is not used
            loss = F.mse_loss(G(y), x)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            step += 1
            if step % 500 == 0:
                print(f"step {step} ({time.perf_counter() - start:.0f} s): MSE {loss.item():.4f}", flush=True)
            continue
        y_fake = codes[torch.randint(len(images), (args.batch_size,))]  # factors drawn like the data's
        z = torch.randn(args.batch_size, z_dim)
        fake = G(torch.cat([z, y_fake], 1) if y_dim else z)
        r1 = args.r1 > 0 and step % args.r1_every == 0
        x.requires_grad_(r1)
        real_logits, fake_logits = d_logits(x, y), d_logits(fake.detach(), y_fake)
        loss_d = discriminator_loss(real_logits, fake_logits)
        if r1:  # R1 = (gamma / 2) E ||grad_x D(x)||^2, times r1_every when applied every r1_every steps
            loss_d = loss_d + args.r1_every * r1_penalty(real_logits, x, args.r1)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = generator_loss(d_logits(fake, y_fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        if step % 500 == 0:
            print(f"step {step} ({time.perf_counter() - start:.0f} s): D(x) {torch.sigmoid(real_logits).mean():.3f}"
                  f" D(G(z)) {torch.sigmoid(fake_logits).mean():.3f}", flush=True)
    write_grid(out)
    print(f"{step} steps in {args.minutes} minutes; samples in {args.out}")


if __name__ == "__main__":
    main()
