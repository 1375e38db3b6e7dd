"""Training throughput of ConditionalDiffusion on this machine, for a few U-Net widths, and sampling images/s
unguided (w = 1: one pass per step) and guided (w = 3: both passes, one batched forward of twice the batch).

    python benchmark.py                                      # train.py's defaults: MNIST 32x32, widths 16 24 32
    python benchmark.py --widths 16 --precisions fp32 bf16   # bf16 autocast too

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps), prints the share of this machine's measured matmul peak it reaches, then
the images/s of DDIM sampling at --sample-steps steps. The first line names the CPU: figures from different CPUs
cannot be compared.
"""
# Adapted from DDPM/benchmark.py: the class-conditional network, and sampling at w = 1 and w = 3
from __future__ import annotations

import argparse
import time

import torch

import train
from model import Config, UNet, l_simple, sample, schedule_of
from shared import bench
from shared.data import load_dataset


def flops_per_step(image_size: int, channels: int, num_classes: int, batch: int, width: int) -> int:
    """FLOPs of one training step (forward and backward of L_simple) of the default U-Net at `width`."""
    cfg = Config(image_size=image_size, channels=channels, num_classes=num_classes, width=width)
    net, sch = UNet(cfg), schedule_of(cfg)
    x = torch.randn(batch, channels, image_size, image_size)
    t = torch.randint(1, cfg.timesteps + 1, (batch,))
    y = torch.randint(0, num_classes + 1, (batch,))
    return bench.count_flops(lambda: l_simple(net, sch, x, t, torch.randn_like(x), y).backward())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the sampling rows (0 = none)")
    p.add_argument("--sample-batch", type=int, default=64, help="images per sampling batch")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    data = load_dataset(args.dataset, args.data_root or None, args.image_size)
    print(bench.report_header(peaks))
    for width in args.widths:
        flops = flops_per_step(args.image_size, data.channels, data.num_classes, args.batch_size, width)
        for precision in args.precisions:
            def config(out: str) -> train.TrainConfig:
                return train.TrainConfig(
                    dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                    batch_size=args.batch_size, steps=args.steps, threads=args.threads, width=width,
                    precision=precision, out=out, log_every=args.warmup, sample_every=10 ** 9, ckpt_every=10 ** 9)

            images_per_s = bench.train_images_per_s(train.main, config)  # skips the warm-up window
            print(bench.report_row(f"width {width} {precision}", images_per_s, flops / args.batch_size, peaks),
                  flush=True)
        if args.sample_steps:
            cfg = Config(image_size=args.image_size, channels=data.channels, num_classes=data.num_classes, width=width)
            net = UNet(cfg).eval()
            labels = torch.arange(args.sample_batch) % data.num_classes
            for w in (1.0, 3.0):
                start = time.perf_counter()
                sample(net, labels, w, args.sample_steps, generator=torch.Generator().manual_seed(0))
                print(f"width {width}: DDIM {args.sample_steps} steps, w = {w:g}, batch {args.sample_batch}: "
                      f"{args.sample_batch / (time.perf_counter() - start):.2f} images/s", flush=True)


if __name__ == "__main__":
    main()
