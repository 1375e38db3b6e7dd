"""How fast do the generators learn at all? Two small probes behind the lr / width defaults (EXPERIMENTS.md).

    python experiments/learning_speed.py identity --lr 1e-3 --g-width 16 --batch-size 8 --seconds 15
    python experiments/learning_speed.py cycle --lr 1e-3 --steps 120 [--gan 1] [--idt 0.5]

identity: one Generator trained as an autoencoder (L1 to its own input) on filled shapes for --seconds; prints
the steps done and the L1 on 200 images (a blank background image scores about 0.15). cycle: the G step of
train.py (cycle + optional identity and LSGAN terms, D updated when --gan > 0) without the pool; prints
loss_cyc (the sum of both directions) every 30 steps. fp32 (bf16 autocast with --bf16), one thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import (Config, Generator, PatchDiscriminator, cycle_loss, identity_loss, lsgan_d_loss,  # noqa: E402
                   lsgan_g_loss)
from shared import shapes  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probe", choices=["identity", "cycle"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--g-width", type=int, default=16)
    p.add_argument("--n-blocks", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--gan", type=float, default=0.0)
    p.add_argument("--idt", type=float, default=0.0)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    a, b, _, _ = shapes.make_paired_shapes(2000, 32, 0)
    A, B = a.float() / 127.5 - 1, b.float() / 127.5 - 1
    cfg = Config(image_size=32, channels=3, g_width=args.g_width, n_blocks=args.n_blocks, d_width=32, d_layers=1)
    G = Generator(cfg)
    cast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    batch = lambda X: X[torch.randint(len(X), (args.batch_size,))]
    if args.probe == "identity":
        opt = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
        start, steps = time.time(), 0
        while time.time() - start < args.seconds:
            x = batch(A)
            with cast():
                y = G(x)
            loss = (y.float() - x).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        with torch.no_grad():
            print(f"{vars(args)}: {steps} steps, L1 on 200 images {(G(A[:200]) - A[:200]).abs().mean():.4f}")
        return
    F, D_A, D_B = Generator(cfg), PatchDiscriminator(cfg), PatchDiscriminator(cfg)
    opt_g = torch.optim.Adam([*G.parameters(), *F.parameters()], lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*D_A.parameters(), *D_B.parameters()], lr=args.lr, betas=(0.5, 0.999))
    for i in range(args.steps):
        x, y = batch(A), batch(B)
        with cast():
            fake_b, fake_a = G(x), F(y)
            l_cyc = cycle_loss(x, F(fake_b), y, G(fake_a))
            l_idt = identity_loss(x, F(x), y, G(y)) if args.idt else torch.zeros(())
            l_gan = lsgan_g_loss(D_B(fake_b)) + lsgan_g_loss(D_A(fake_a)) if args.gan else torch.zeros(())
        opt_g.zero_grad()
        (args.gan * l_gan + 10 * l_cyc + args.idt * 10 * l_idt).backward()
        opt_g.step()
        if args.gan:
            with cast():
                l_d = lsgan_d_loss(D_B(y), D_B(fake_b.detach())) + lsgan_d_loss(D_A(x), D_A(fake_a.detach()))
            opt_d.zero_grad()
            l_d.backward()
            opt_d.step()
        if (i + 1) % 30 == 0:
            print(f"step {i + 1}: loss_cyc {l_cyc.item():.4f} loss_idt {l_idt.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
