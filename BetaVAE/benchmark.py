"""Training throughput of BetaVAE on this machine (the real loop, train.main), fp32 and, on native-bf16 CPUs, bf16.

    python benchmark.py                                # train.py's defaults: shapes, 32x32, batch 64, 1 thread
    python benchmark.py --threads 2 --precisions fp32 bf16
    python benchmark.py --image-size 64                # the paper's 64x64 network (4 conv layers)

Runs train.main for --steps steps per setting and reads images/s from its metrics.jsonl (after --warmup steps),
then prints the share of this machine's measured matmul peak it reaches. The first line names the CPU: figures
from different CPUs cannot be compared.
"""
from __future__ import annotations

import argparse

import torch

import train
from model import BetaVAE, Config, bernoulli_nll, beta_vae_loss, kl_per_dim
from shared import bench
from shared.dist import cpu_flags


def default_precisions() -> list[str]:
    """fp32, and bf16 only where the CPU has native bf16 (emulated bf16 is 4-5x slower here)."""
    return ["fp32", "bf16"] if {"avx512_bf16", "amx_bf16"} & cpu_flags() else ["fp32"]


def flops_per_step(image_size: int, channels: int, batch: int) -> int:
    """FLOPs of one training step (forward, loss, backward) of the default network."""
    vae = BetaVAE(Config(image_size=image_size, channels=channels))
    x = torch.rand(batch, channels, image_size, image_size) * 2 - 1

    def step() -> None:
        logits, mu, logvar = vae(x)
        beta_vae_loss(bernoulli_nll(logits, x), kl_per_dim(mu, logvar).sum(1), 4.0).backward()

    return bench.count_flops(step)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precisions", nargs="+", default=default_precisions(), choices=["fp32", "bf16"],
                   help="default: fp32, and bf16 on CPUs with native bf16")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}
    channels = 1 if args.dataset in ("mnist", "fashion-mnist") else 3
    flops = flops_per_step(args.image_size, channels, args.batch_size)
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    print(f"BetaVAE {args.dataset} {args.image_size}x{args.image_size}, batch {args.batch_size}: "
          f"{flops / args.batch_size / 1e6:.1f} MFLOP per training image")
    print(bench.report_header(peaks))
    for precision in args.precisions:
        def config(out: str) -> train.TrainConfig:
            return train.TrainConfig(dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                                     batch_size=args.batch_size, steps=args.steps, threads=args.threads,
                                     precision=precision, out=out, log_every=args.warmup, sample_every=10 ** 9,
                                     ckpt_every=10 ** 9)

        images_per_s = bench.train_images_per_s(train.main, config)  # skips the warm-up window
        print(bench.report_row(precision, images_per_s, flops / args.batch_size, peaks), flush=True)


if __name__ == "__main__":
    main()
