"""Training throughput of WGAN on this machine: fp32 vs bf16 autocast, with and without channels_last.

    python benchmark.py                                     # train.py's defaults: WGAN-GP, 32x32, widths 32, batch 64
    python benchmark.py --variant clip                      # the original WGAN (no penalty: cheaper critic updates)
    python benchmark.py --precisions fp32 --steps 10        # quicker

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its metrics.jsonl
(after --warmup steps). images/s counts the real images the critic sees (n_critic batches per step); generator
steps/s = images/s / (n_critic * batch). Then prints the share of this machine's measured matmul peak it reaches.
"""
# Adapted from DCGAN/benchmark.py: a step is n_critic critic updates (with the penalty's double backward) + one G update.
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import train
from model import (Config, Critic, Generator, critic_loss, generator_loss, gradient_penalty, random_interpolates)
from shared.bench import count_flops, matmul_peak


def flops_per_step(args: argparse.Namespace, channels: int) -> int:
    """FLOPs of one training step (n_critic critic updates + one G update), counted on the same networks."""
    norm = train.CRITIC_NORM[args.variant]
    cfg = Config(image_size=args.image_size, channels=channels, g_width=args.width, d_width=args.width, critic_norm=norm)
    G, D, B = Generator(cfg), Critic(cfg), args.batch_size
    x = torch.randn(B, channels, args.image_size, args.image_size)

    def step() -> None:
        for _ in range(args.n_critic):
            with torch.no_grad():
                fake = G(torch.randn(B, cfg.z_dim))
            loss = critic_loss(D(x), D(fake))
            if args.variant == "gp":
                loss = loss + 10 * gradient_penalty(D, random_interpolates(x, fake)[0])[0]
            loss.backward()
        D.requires_grad_(False)
        generator_loss(D(G(torch.randn(B, cfg.z_dim)))).backward()
        D.requires_grad_(True)

    return count_flops(step)


def measure(args: argparse.Namespace, precision: str, channels_last: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = train.TrainConfig(dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                                batch_size=args.batch_size, steps=args.steps, threads=args.threads,
                                variant=args.variant, lr=train.DEFAULT_LR[args.variant], n_critic=args.n_critic,
                                g_width=args.width, d_width=args.width, precision=precision,
                                channels_last=channels_last, out=tmp, log_every=args.warmup,
                                sample_every=10 ** 9, ckpt_every=10 ** 9)
        train.main(cfg)
        records = [json.loads(l) for l in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return sum(r["images_per_s"] for r in records[1:]) / len(records[1:])  # skip the warm-up window


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--data-root", default="")
    p.add_argument("--variant", default="gp", choices=["gp", "clip"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-critic", type=int, default=None, help="default: the variant's (train.DEFAULT_N_CRITIC)")
    p.add_argument("--width", type=int, default=train.TrainConfig.g_width, help="G and critic widths")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.n_critic is None:
        args.n_critic = train.DEFAULT_N_CRITIC[args.variant]
    torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    channels = 1 if args.dataset in ("mnist", "fashion-mnist") else 3
    flops = flops_per_step(args, channels)
    per_step = args.batch_size * args.n_critic  # real images per step
    print(f"matmul peak with {args.threads} threads: fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s")
    print(f"WGAN-{args.variant} {args.image_size}x{args.image_size}, widths {args.width}, batch {args.batch_size}, "
          f"n_critic {args.n_critic}: {flops / 1e9:.2f} GFLOP per step")
    print(f"{'precision':>9} {'layout':>13} {'images/s':>9} {'G steps/s':>9} {'TFLOP/s':>8} {'% fp32 peak':>11} "
          f"{'% bf16 peak':>11}")
    for precision in args.precisions:
        for cl in (False, True):
            ips = measure(args, precision, cl)
            achieved = ips / per_step * flops
            print(f"{precision:>9} {'channels_last' if cl else 'contiguous':>13} {ips:9.0f} {ips / per_step:9.2f} "
                  f"{achieved / 1e12:8.3f} {100 * achieved / peaks['fp32']:10.1f}% "
                  f"{100 * achieved / peaks['bf16']:10.1f}%", flush=True)


if __name__ == "__main__":
    main()
