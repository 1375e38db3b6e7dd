"""Training throughput of BiGAN on this machine: fp32 vs bf16 autocast, with and without channels_last.

    python benchmark.py                                     # train.py's defaults
    python benchmark.py --precisions fp32 --threads 1       # one core

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps), then prints the share of this machine's measured matmul peak it reaches.
"""
# Adapted from DCGAN/benchmark.py: three networks (G, E, D) and the joint E/G step.
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import train
from model import Config, Discriminator, Encoder, Generator, discriminator_loss, encoder_generator_loss
from shared.bench import count_flops, matmul_peak


def flops_per_step(image_size: int, channels: int, batch: int) -> int:
    """FLOPs of one training step (D step + E/G step) of train.py's default networks."""
    cfg = train.model_config(train.TrainConfig(image_size=image_size), channels)
    G, E, D = Generator(cfg), Encoder(cfg), Discriminator(cfg)
    x = torch.randn(batch, channels, image_size, image_size)

    def step() -> None:
        z = torch.randn(batch, cfg.z_dim)
        x_fake, z_real = G(z), E(x)
        discriminator_loss(D(x, z_real.detach()), D(x_fake.detach(), z)).backward()
        encoder_generator_loss(D(x, z_real), D(x_fake, z)).backward()

    return count_flops(step)


def measure(args: argparse.Namespace, precision: str, channels_last: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = train.TrainConfig(dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                                batch_size=args.batch_size, steps=args.steps, threads=args.threads,
                                precision=precision, channels_last=channels_last, out=tmp, log_every=args.warmup,
                                sample_every=10 ** 9, ckpt_every=10 ** 9)
        train.main(cfg)
        records = [json.loads(l) for l in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return sum(r["images_per_s"] for r in records[1:]) / len(records[1:])  # skip the warm-up window


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    channels = 1 if args.dataset in ("mnist", "fashion-mnist") else 3
    flops = flops_per_step(args.image_size, channels, args.batch_size)
    print(f"matmul peak with {args.threads} threads: fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s")
    print(f"BiGAN {args.image_size}x{args.image_size}, batch {args.batch_size}: "
          f"{flops / args.batch_size / 1e9:.3f} GFLOP per training image")
    print(f"{'precision':>9} {'layout':>13} {'images/s':>9} {'TFLOP/s':>8} {'% fp32 peak':>11} {'% bf16 peak':>11}")
    for precision in args.precisions:
        for cl in (False, True):
            ips = measure(args, precision, cl)
            achieved = ips / args.batch_size * flops
            print(f"{precision:>9} {'channels_last' if cl else 'contiguous':>13} {ips:9.0f} {achieved / 1e12:8.3f} "
                  f"{100 * achieved / peaks['fp32']:10.1f}% {100 * achieved / peaks['bf16']:10.1f}%", flush=True)


if __name__ == "__main__":
    main()
