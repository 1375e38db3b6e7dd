"""Training throughput of ConditionalGAN on this machine: fp32 vs bf16 autocast, with and without channels_last.

    python benchmark.py                                     # train.py's defaults: MNIST 32x32, widths 32, batch 64
    python benchmark.py --conditioning acgan --precisions fp32

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps), then prints the share of this machine's measured matmul peak it reaches.
Every figure is printed under the CPU line (model, bf16 features, threads): CPUs differ between machines.
"""
from __future__ import annotations

import argparse

import torch

import train
from model import Config, Discriminator, Generator, discriminator_loss, generator_loss
from shared.bench import count_flops, cpu_line, matmul_peak, report_header, report_row, train_images_per_s
from shared.dist import cpu_flags

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def flops_per_step(image_size: int, channels: int, batch: int, width: int, conditioning: str) -> int:
    """FLOPs of one training step (D step + G step), counted on the same networks."""
    cfg = Config(image_size=image_size, channels=channels, num_classes=10, g_width=width, d_width=width,
                 conditioning=conditioning)
    G, D = Generator(cfg), Discriminator(cfg)
    x, y = torch.randn(batch, channels, image_size, image_size), torch.randint(10, (batch,))

    def step() -> None:
        fake = G(torch.randn(batch, cfg.z_dim), y)
        discriminator_loss(D(x, y), D(fake.detach(), y), y)[0].backward()
        generator_loss(D(fake, y), y)[0].backward()

    return count_flops(step)


def measure(args: argparse.Namespace, precision: str, channels_last: bool) -> float:
    """Mean images/s of train.main with these settings, after the first --warmup steps."""
    def make_config(out: str) -> train.TrainConfig:
        return train.TrainConfig(dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                                 batch_size=args.batch_size, steps=args.steps, threads=args.threads,
                                 g_width=args.width, d_width=args.width, conditioning=args.conditioning,
                                 precision=precision, channels_last=channels_last, out=out,
                                 log_every=args.warmup, sample_every=10 ** 9, ckpt_every=10 ** 9)

    return train_images_per_s(train.main, make_config)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=train.TrainConfig.g_width, help="G and D widths")
    p.add_argument("--conditioning", default="projection", choices=["projection", "acgan"])
    p.add_argument("--precisions", nargs="+", default=None, choices=list(DTYPES),
                   help="default: fp32, and bf16 where the CPU has it natively (avx512_bf16 or amx_bf16)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # before the peak: it is measured with the run's thread count
    print(cpu_line(args.threads), flush=True)
    if args.precisions is None:
        native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
        args.precisions = ["fp32", "bf16"] if native else ["fp32"]
        if not native:  # emulated bf16 matmuls run at ~1/50 of fp32 on such CPUs: the peak alone takes minutes
            print("bf16 left out: no native bf16 on this CPU (--precisions fp32 bf16 measures it anyway)")
    peaks = {name: matmul_peak(DTYPES[name]) for name in args.precisions}
    channels = 1 if args.dataset in ("mnist", "fashion-mnist") else 3
    flops = flops_per_step(args.image_size, channels, args.batch_size, args.width, args.conditioning)
    print("matmul peak: " + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    print(f"ConditionalGAN ({args.conditioning}) {args.dataset} {args.image_size}x{args.image_size}, widths "
          f"{args.width}, batch {args.batch_size}: {flops / args.batch_size / 1e9:.3f} GFLOP per training image")
    print(report_header(peaks))
    for precision in args.precisions:
        for cl in (False, True):
            name = f"{precision} {'channels_last' if cl else 'contiguous'}"
            print(report_row(name, measure(args, precision, cl), flops / args.batch_size, peaks), flush=True)


if __name__ == "__main__":
    main()
