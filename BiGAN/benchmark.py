"""Training throughput of BiGAN on this machine: fp32 vs bf16 autocast, with and without channels_last.

    python benchmark.py                                     # train.py's defaults: MNIST 32x32, batch 64
    python benchmark.py --dataset shapes --precisions fp32 --threads 1   # RGB shapes, one core

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps), then prints the share of this machine's measured matmul peak it reaches.
Every figure is printed under the CPU line (model, bf16 features, threads): CPUs differ between machines.
"""
# Adapted from DCGAN/benchmark.py: three networks (G, E, D) and the joint E/G step.
from __future__ import annotations

import argparse

import torch

import train
from model import Discriminator, Encoder, Generator, discriminator_loss, encoder_generator_loss, judge_pairs
from shared.bench import count_flops, cpu_line, matmul_peak, report_header, report_row, train_images_per_s


def flops_per_step(image_size: int, channels: int, batch: int) -> int:
    """FLOPs of one training step (D step + E/G step) of train.py's default networks."""
    cfg = train.model_config(train.TrainConfig(image_size=image_size), channels)
    G, E, D = Generator(cfg), Encoder(cfg), Discriminator(cfg)
    x = torch.randn(batch, channels, image_size, image_size)

    def step() -> None:
        z = torch.randn(batch, cfg.z_dim)
        x_fake, z_real = G(z), E(x)
        discriminator_loss(*judge_pairs(D, x, z_real.detach(), x_fake.detach(), z)).backward()
        encoder_generator_loss(*judge_pairs(D, x, z_real, x_fake, z)).backward()

    return count_flops(step)


def measure(args: argparse.Namespace, precision: str, channels_last: bool) -> float:
    """Mean images/s of train.main with these settings, after the first --warmup steps."""
    def make_config(out: str) -> train.TrainConfig:
        return train.TrainConfig(dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                                 batch_size=args.batch_size, steps=args.steps, threads=args.threads,
                                 precision=precision, channels_last=channels_last, out=out, log_every=args.warmup,
                                 sample_every=10 ** 9, ckpt_every=10 ** 9)

    return train_images_per_s(train.main, make_config)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # before the peak: it is measured with the run's thread count
    print(cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}  # fp32's peak always: the reference of every row
    peaks = {name: matmul_peak(dtype) for name, dtype in dtypes.items() if name == "fp32" or name in args.precisions}
    channels = 1 if args.dataset in ("mnist", "fashion-mnist") else 3
    flops = flops_per_step(args.image_size, channels, args.batch_size)
    print("matmul peak: " + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    print(f"BiGAN {args.dataset} {args.image_size}x{args.image_size}, batch {args.batch_size}: "
          f"{flops / args.batch_size / 1e9:.3f} GFLOP per training image")
    print(report_header(peaks))
    for precision in args.precisions:
        for cl in (False, True):
            name = f"{precision} {'channels_last' if cl else 'contiguous'}"
            print(report_row(name, measure(args, precision, cl), flops / args.batch_size, peaks), flush=True)


if __name__ == "__main__":
    main()
