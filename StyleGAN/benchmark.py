"""Training throughput of StyleGAN2 on this machine: fp32 vs bf16 autocast, the real loop with its lazy regularisers.

    python benchmark.py                                       # train.py's defaults: MNIST 32x32, widths 64, batch 32
    python benchmark.py --precisions fp32 bf16 --threads 1    # both precisions, one thread
    python benchmark.py --pl-weight 2                         # with lazy path-length regularisation (every 4 steps)
    python benchmark.py --dataset shapes --width 64           # RGB, as experiments/anchor.py compares

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its metrics.jsonl
(after --warmup steps; choose --steps - --warmup a multiple of 16 so the lazy R1 steps are counted at their share),
then prints the share of this machine's measured matmul peaks it reaches. The first line names the CPU: figures
from different CPUs cannot be compared.
"""
# Adapted from DCGAN/benchmark.py: StyleGAN's widths and regularisers; no channels_last rows (the grouped
# convolutions reshape the batch into channels, which needs the contiguous layout).
from __future__ import annotations

import argparse

import torch

import train
from model import (Config, Discriminator, Generator, discriminator_loss, generator_loss, path_length_penalty,
                   r1_penalty)
from shared import bench
from shared.data import load_dataset
from shared.dist import cpu_flags


def default_precisions() -> list[str]:
    """fp32, and bf16 where the CPU has native bf16 (AVX512-BF16 or AMX)."""
    return ["fp32", "bf16"] if {"avx512_bf16", "amx_bf16"} & cpu_flags() else ["fp32"]


def flops_per_step(cfg: Config, batch: int, r1_every: int, pl_every: int = 0) -> float:
    """FLOPs of one average training step: D step, G step (one shared G forward), plus 1/r1_every of an R1 step
    and 1/pl_every of a path-length step (half batch) when those are on (0 = off).

    Counted on ONE sample and multiplied by `batch`: torch's FLOP formula for the weight gradient of a grouped
    convolution ignores the groups (with groups = B it counts B times the work), and with one sample the
    modulated convolutions have a single group. Every op here is per sample, so the total scales with the batch."""
    G, D = Generator(cfg), Discriminator(cfg)
    per_sample, batch = batch, 1
    x = torch.randn(batch, cfg.channels, cfg.image_size, cfg.image_size)

    def main_step() -> None:
        fake = G(torch.randn(batch, cfg.z_dim))
        discriminator_loss(D(x), D(fake.detach())).backward()
        generator_loss(D(fake)).backward()

    def r1_step() -> None:
        x_r = x.clone().requires_grad_(True)
        r1_penalty(D(x_r), x_r, 1.0).backward()

    def pl_step() -> None:
        images, ws = G(torch.randn(1, cfg.z_dim), return_ws=True)
        path_length_penalty(images, ws, torch.zeros(()))[0].backward()

    flops = float(bench.count_flops(main_step)) * per_sample
    if r1_every:
        flops += bench.count_flops(r1_step) * per_sample / r1_every
    if pl_every:  # on batch / pl_batch_shrink samples
        flops += bench.count_flops(pl_step) * max(1, per_sample // train.TrainConfig.pl_batch_shrink) / pl_every
    return flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--width", type=int, default=train.TrainConfig.g_width, help="G and D widths")
    p.add_argument("--w-dim", type=int, default=train.TrainConfig.w_dim, help="z and w dimension")
    p.add_argument("--mapping-layers", type=int, default=train.TrainConfig.mapping_layers)
    p.add_argument("--precisions", nargs="+", default=default_precisions(), choices=["fp32", "bf16"],
                   help="default: fp32, and bf16 on CPUs with native bf16")
    p.add_argument("--r1-every", type=int, default=train.TrainConfig.r1_every)
    p.add_argument("--pl-weight", type=float, default=0.0, help="path-length weight (0 = off, train.py's default)")
    p.add_argument("--steps", type=int, default=36)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}
    channels = load_dataset(args.dataset, args.data_root or None, args.image_size).channels
    mcfg = Config(image_size=args.image_size, channels=channels, z_dim=args.w_dim, w_dim=args.w_dim,
                  mapping_layers=args.mapping_layers, g_width=args.width, d_width=args.width)
    pl_every = train.TrainConfig.pl_every if args.pl_weight > 0 else 0
    flops = flops_per_step(mcfg, args.batch_size, args.r1_every, pl_every)
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    print(f"StyleGAN2 {args.dataset} {args.image_size}x{args.image_size}, widths {args.width}, w {args.w_dim}, "
          f"mapping {args.mapping_layers}, batch {args.batch_size}, R1 every {args.r1_every}, PL "
          f"{'every %d' % pl_every if pl_every else 'off'}: {flops / args.batch_size / 1e9:.3f} GFLOP per training image")
    print(bench.report_header(peaks))
    for precision in args.precisions:
        def config(out: str) -> train.TrainConfig:
            return train.TrainConfig(
                dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                batch_size=args.batch_size, steps=args.steps, minutes=0, threads=args.threads, g_width=args.width,
                d_width=args.width, z_dim=args.w_dim, w_dim=args.w_dim, mapping_layers=args.mapping_layers,
                r1_every=args.r1_every, pl_weight=args.pl_weight, precision=precision, out=out,
                log_every=args.warmup, sample_every=10 ** 9, ckpt_every=10 ** 9)

        images_per_s = bench.train_images_per_s(train.main, config)  # skips the warm-up window
        print(bench.report_row(precision, images_per_s, flops / args.batch_size, peaks), flush=True)


if __name__ == "__main__":
    main()
