"""Training throughput of WGAN on this machine: fp32 vs bf16 autocast, with and without channels_last.

    python benchmark.py                                     # WGAN-GP, 32x32, widths 32, batch 64, on shapes (RGB)
    python benchmark.py --variant clip                      # the original WGAN (no penalty: cheaper critic updates)
    python benchmark.py --precisions fp32 --steps 10        # quicker

Prints the CPU first (model, bf16 features, threads: figures from different CPUs cannot be compared), then runs
the real training loop (train.main) for --steps steps per setting and reads images/s from its metrics.jsonl
(after --warmup steps). images/s counts the real images the critic sees (n_critic batches per step); generator
steps/s = images/s / (n_critic * batch). Each row gives the share of this machine's measured matmul peaks.
"""
# Adapted from DCGAN/benchmark.py: a step is n_critic critic updates (with the penalty's double backward) + one G update.
from __future__ import annotations

import argparse

import torch

import train
from model import Config, Critic, Generator, critic_loss, generator_loss, gradient_penalty, random_interpolates
from shared import bench


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

    return bench.count_flops(step)


def make_config(args: argparse.Namespace, precision: str, channels_last: bool, out: str) -> train.TrainConfig:
    """train.py's config for one benchmark setting: the variant's learning rates, no samples or checkpoints."""
    return train.TrainConfig(dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                             batch_size=args.batch_size, steps=args.steps, threads=args.threads, variant=args.variant,
                             lr=train.DEFAULT_LR[args.variant], lr_d=train.DEFAULT_LR_D[args.variant],
                             n_critic=args.n_critic, g_width=args.width, d_width=args.width, precision=precision,
                             channels_last=channels_last, out=out, log_every=args.warmup,
                             sample_every=10 ** 9, ckpt_every=10 ** 9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default="shapes", help="shapes (RGB, as in EXPERIMENTS.md's figures) or mnist")
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
    cpu = bench.cpu_line(args.threads)
    print(cpu, flush=True)
    # only the peaks of the precisions asked for: without AVX512-BF16 / AMX a bf16 peak takes minutes to measure
    peaks = {p: bench.matmul_peak({"fp32": torch.float32, "bf16": torch.bfloat16}[p]) for p in args.precisions}
    channels = 1 if args.dataset in ("mnist", "fashion-mnist") else 3
    per_step = args.batch_size * args.n_critic  # real images per generator step
    flops = flops_per_step(args, channels)
    print("matmul peak: " + ", ".join(f"{p} {v / 1e12:.3f} TFLOP/s" for p, v in peaks.items()) + f" ({cpu})")
    print(f"WGAN-{args.variant} {args.image_size}x{args.image_size}, widths {args.width}, batch {args.batch_size}, "
          f"n_critic {args.n_critic}, {args.dataset}: {flops / 1e9:.2f} GFLOP per generator step")
    rows = [bench.report_header(peaks) + f" {'G steps/s':>9}"]
    for precision in args.precisions:
        for cl in (False, True):
            ips = bench.train_images_per_s(train.main, lambda out: make_config(args, precision, cl, out))
            rows.append(bench.report_row(f"{precision} {'channels_last' if cl else 'contiguous'}", ips,
                                         flops / per_step, peaks) + f" {ips / per_step:9.2f}")
    print(cpu)  # again beside the table: train.main's own output comes in between
    print("\n".join(rows))


if __name__ == "__main__":
    main()
