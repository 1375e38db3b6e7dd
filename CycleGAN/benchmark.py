"""Training throughput of CycleGAN on this machine: fp32 vs bf16 autocast, at train.py's network sizes.

    python benchmark.py                                     # train.py's defaults: shapes, 32x32, widths 32, 3 blocks
    python benchmark.py --precisions fp32 bf16              # also bf16 autocast (default only on native-bf16 CPUs)
    python benchmark.py --g-width 64 --n-blocks 6 --d-width 64 --precisions fp32   # the paper's 128x128 networks

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps; an image is one A or one B image, so pairs/s is half of it), then prints
the share of this machine's measured matmul peaks it reaches. The first line names the CPU: figures from
different CPUs cannot be compared.
"""
from __future__ import annotations

import argparse

import torch

import train
from domains import load_domains
from model import (Config, Generator, PatchDiscriminator, cycle_loss, d_layers_for, identity_loss, lsgan_d_loss,
                   lsgan_g_loss)
from shared import bench
from shared.dist import cpu_flags


def default_precisions() -> list[str]:
    """fp32, and bf16 where the CPU has native bf16 (AVX512-BF16 or AMX)."""
    return ["fp32", "bf16"] if {"avx512_bf16", "amx_bf16"} & cpu_flags() else ["fp32"]


def flops_per_step(cfg: Config, batch: int) -> int:
    """FLOPs of one training step (G step: 6 generator passes + 2 D passes, backward; D step: 4 D passes)."""
    G_AB, G_BA, D_A, D_B = Generator(cfg), Generator(cfg), PatchDiscriminator(cfg), PatchDiscriminator(cfg)
    a, b = (torch.randn(batch, cfg.channels, cfg.image_size, cfg.image_size) for _ in range(2))

    def step() -> None:
        fake_b, fake_a = G_AB(a), G_BA(b)
        loss = (lsgan_g_loss(D_B(fake_b)) + lsgan_g_loss(D_A(fake_a)) + cycle_loss(a, G_BA(fake_b), b, G_AB(fake_a))
                + identity_loss(a, G_BA(a), b, G_AB(b)))
        loss.backward()
        (lsgan_d_loss(D_B(b), D_B(fake_b.detach())) + lsgan_d_loss(D_A(a), D_A(fake_a.detach()))).backward()

    return bench.count_flops(step)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--g-width", type=int, default=train.TrainConfig.g_width)
    p.add_argument("--n-blocks", type=int, default=train.TrainConfig.n_blocks)
    p.add_argument("--d-width", type=int, default=train.TrainConfig.d_width)
    p.add_argument("--precisions", nargs="+", default=default_precisions(), choices=["fp32", "bf16"],
                   help="default: fp32, and bf16 on CPUs with native bf16")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}
    channels = load_domains(args.dataset, args.data_root or None, args.image_size).channels
    mcfg = Config(image_size=args.image_size, channels=channels, g_width=args.g_width, n_blocks=args.n_blocks,
                  d_width=args.d_width, d_layers=d_layers_for(args.image_size))
    flops = flops_per_step(mcfg, args.batch_size)
    images = 2 * args.batch_size  # one A and one B image per pair
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    print(f"CycleGAN {args.dataset} {args.image_size}x{args.image_size}, G width {args.g_width} x {args.n_blocks} "
          f"blocks, D width {args.d_width}, batch {args.batch_size} pairs: {flops / images / 1e9:.3f} GFLOP per "
          f"training image")
    print(bench.report_header(peaks))
    for precision in args.precisions:
        def config(out: str) -> train.TrainConfig:
            return train.TrainConfig(
                dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                batch_size=args.batch_size, steps=args.steps, minutes=0, threads=args.threads,
                g_width=args.g_width, n_blocks=args.n_blocks, d_width=args.d_width, precision=precision,
                out=out, log_every=args.warmup, sample_every=10 ** 9, ckpt_every=10 ** 9)

        images_per_s = bench.train_images_per_s(train.main, config)  # skips the warm-up window
        print(bench.report_row(precision, images_per_s, flops / images, peaks), flush=True)


if __name__ == "__main__":
    main()
