"""Why DCGAN draws blobs on `shapes`: train on shapes with some factors held fixed, or with an R1 penalty.

A diagnostic, not a training script (no checkpoints, no resume): it runs the same G, D, losses and Adam
settings as train.py's defaults for a wall-clock budget on shapes re-rendered so that only the factors named
in --vary change (the others sit at their middle level), optionally keeping only every --every-th level of
scale, rotation, x and y, and optionally adding Mescheder et al.'s (2018) R1 penalty (gamma / 2) E||grad D(x)||^2
on real images to D's loss. It writes a grid of 64 samples (fixed noise) and prints the step count and
D(G(z)). The results are in README.md, "Known limits".

    python shapes_ablation.py --vary shape,rotation --minutes 4 --threads 1   # 17 distinct images
    python shapes_ablation.py --vary shape,colour,scale,rotation               # 510: position fixed
    python shapes_ablation.py --every 2                                        # every factor, half the levels: 2,592
    python shapes_ablation.py --r1 1 --r1-every 4 --minutes 10                 # all of shapes, R1 penalty
"""
from __future__ import annotations

import argparse
import time

import torch
from torchvision.utils import save_image

from model import Config, Discriminator, Generator, discriminator_loss, generator_loss, sample
from shared import shapes
from shared.data import to_float


def ablated_shapes(vary: list[str], every: int, n: int, seed: int, image_size: int) -> torch.Tensor:
    """uint8 images whose factors outside `vary` sit at their middle level; others keep every `every`-th level."""
    factors = shapes.sample_factors(n, torch.Generator().manual_seed(seed))
    for i, (name, size) in enumerate(zip(shapes.FACTOR_NAMES, shapes.FACTOR_SIZES)):
        if name not in vary:
            factors[:, i] = size // 2
        elif name not in ("shape", "colour"):
            factors[:, i] = factors[:, i] // every * every
    return shapes.render(factors, image_size)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vary", default=",".join(shapes.FACTOR_NAMES), help="comma-separated factors that vary")
    p.add_argument("--every", type=int, default=1, help="keep every k-th level of scale, rotation, x, y")
    p.add_argument("--r1", type=float, default=0.0, help="R1 weight gamma (0 = off, as train.py)")
    p.add_argument("--r1-every", type=int, default=1, help="apply R1 every k steps, scaled by k (lazy R1)")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=32, help="G and D widths (train.py's default: 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="shapes_ablation.png")
    args = p.parse_args(argv)
    vary = args.vary.split(",")
    if unknown := set(vary) - set(shapes.FACTOR_NAMES):
        p.error(f"unknown factors {sorted(unknown)}; choose from {', '.join(shapes.FACTOR_NAMES)}")
    if args.every < 1 or args.r1 < 0 or args.r1_every < 1:
        p.error("--every and --r1-every must be >= 1, --r1 >= 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    images = to_float(ablated_shapes(vary, args.every, 50_000, args.seed, 32))
    print(f"{len(torch.unique(images.flatten(1), dim=0))} distinct images; varying: {', '.join(vary)}")
    cfg = Config(image_size=32, channels=3, g_width=args.width, d_width=args.width)
    fmt = torch.channels_last
    G, D = Generator(cfg).to(memory_format=fmt), Discriminator(cfg).to(memory_format=fmt)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    fixed_z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(args.seed))
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < args.minutes * 60:
        x = images[torch.randint(len(images), (args.batch_size,))].contiguous(memory_format=fmt)
        fake = G(torch.randn(args.batch_size, cfg.z_dim))
        r1 = args.r1 > 0 and step % args.r1_every == 0
        x.requires_grad_(r1)
        real_logits, fake_logits = D(x), D(fake.detach())
        loss_d = discriminator_loss(real_logits, fake_logits)
        if r1:  # R1 = (gamma / 2) E ||grad_x D(x)||^2, times r1_every when applied every r1_every steps
            grad, = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
            loss_d = loss_d + args.r1 * args.r1_every / 2 * grad.pow(2).flatten(1).sum(1).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = generator_loss(D(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        if step % 500 == 0:
            print(f"step {step} ({time.perf_counter() - start:.0f} s): D(x) {torch.sigmoid(real_logits).mean():.3f}"
                  f" D(G(z)) {torch.sigmoid(fake_logits).mean():.3f}", flush=True)
    G.eval()
    save_image(sample(G, 64, z=fixed_z) * 0.5 + 0.5, args.out, nrow=8, padding=1)
    print(f"{step} steps in {args.minutes} minutes; samples in {args.out}")


if __name__ == "__main__":
    main()
