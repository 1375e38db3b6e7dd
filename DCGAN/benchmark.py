"""Training throughput of DCGAN on this machine: fp32 vs bf16 autocast, with and without channels_last.

    python benchmark.py                                     # train.py's defaults: MNIST, 32x32, widths 32, batch 64
    python benchmark.py --precisions fp32 bf16              # also bf16 autocast (default only on native-bf16 CPUs)
    python benchmark.py --image-size 64 --width 64 --precisions fp32   # the paper's 64x64 network
    python benchmark.py --r1 1 --precisions fp32            # the cost of an R1 penalty on every step

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps), then prints the share of this machine's measured matmul peaks it reaches.
The first line names the CPU: figures from different CPUs cannot be compared.
"""
from __future__ import annotations

import argparse

import torch

import train
from model import Config, Discriminator, Generator, discriminator_loss, generator_loss, r1_penalty
from shared import bench
from shared.data import load_dataset
from shared.dist import cpu_flags


def default_precisions() -> list[str]:
    """fp32, and bf16 where the CPU has native bf16 (AVX512-BF16 or AMX): emulated, a bf16 matmul peak alone
    takes minutes to measure and the bf16 rows are 4-5x slower anyway."""
    return ["fp32", "bf16"] if {"avx512_bf16", "amx_bf16"} & cpu_flags() else ["fp32"]


def flops_per_step(image_size: int, channels: int, batch: int, width: int, r1: bool = False) -> int:
    """FLOPs of one training step (D step, with R1's double backward if asked, + G step) on the same networks."""
    cfg = Config(image_size=image_size, channels=channels, g_width=width, d_width=width)
    G, D = Generator(cfg), Discriminator(cfg)
    x = torch.randn(batch, channels, image_size, image_size, requires_grad=r1)

    def step() -> None:
        fake = G(torch.randn(batch, cfg.z_dim))
        real_logits = D(x)
        loss_d = discriminator_loss(real_logits, D(fake.detach()))
        (loss_d + r1_penalty(real_logits, x, 1.0) if r1 else loss_d).backward()
        generator_loss(D(fake)).backward()

    return bench.count_flops(step)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=train.TrainConfig.g_width, help="G and D widths")
    p.add_argument("--precisions", nargs="+", default=default_precisions(), choices=["fp32", "bf16"],
                   help="default: fp32, and bf16 on CPUs with native bf16")
    p.add_argument("--r1", type=float, default=0.0, help="R1 gamma, applied every step (0 = off, train.py's default)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}  # only the ones asked for
    channels = load_dataset(args.dataset, args.data_root or None, args.image_size).channels
    flops = flops_per_step(args.image_size, channels, args.batch_size, args.width, r1=args.r1 > 0)
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    print(f"DCGAN {args.dataset} {args.image_size}x{args.image_size}, widths {args.width}, batch "
          f"{args.batch_size}, R1 {args.r1 or 'off'}: {flops / args.batch_size / 1e9:.3f} GFLOP per training image")
    print(bench.report_header(peaks))
    for precision in args.precisions:
        for channels_last in (False, True):
            def config(out: str) -> train.TrainConfig:
                return train.TrainConfig(
                    dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                    batch_size=args.batch_size, steps=args.steps, threads=args.threads, g_width=args.width,
                    d_width=args.width, r1=args.r1, precision=precision,
                    channels_last=channels_last, out=out, log_every=args.warmup, sample_every=10 ** 9,
                    ckpt_every=10 ** 9)

            images_per_s = bench.train_images_per_s(train.main, config)  # skips the warm-up window
            name = f"{precision} {'channels_last' if channels_last else 'contiguous'}"
            print(bench.report_row(name, images_per_s, flops / args.batch_size, peaks), flush=True)


if __name__ == "__main__":
    main()
