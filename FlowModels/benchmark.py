"""Training throughput of RealNVP and Glow on this machine, fp32 vs bf16 autocast.

    python benchmark.py                                    # train.py's defaults, both flows, 1 thread
    python benchmark.py --flows glow --precisions fp32     # one row
    python benchmark.py --depth 8 --width 128              # another size

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps), then prints the share of this machine's measured matmul peaks it reaches.
The first line names the CPU: figures from different CPUs cannot be compared.
"""
from __future__ import annotations

import argparse

import torch

import train
from model import Config, Flow, bits_per_dim, initialize, log_prob
from shared import bench
from shared.data import load_dataset
from shared.dist import cpu_flags


def default_precisions() -> list[str]:
    """fp32, and bf16 where the CPU has native bf16 (AVX512-BF16 or AMX)."""
    return ["fp32", "bf16"] if {"avx512_bf16", "amx_bf16"} & cpu_flags() else ["fp32"]


def flops_per_step(cfg: Config, batch: int) -> int:
    """FLOPs of one training step (forward + backward of the bits/dim loss)."""
    flow = Flow(cfg)
    x = torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size)
    initialize(flow, x)
    return bench.count_flops(lambda: bits_per_dim(-log_prob(flow, x), cfg.num_dims).mean().backward())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--flows", nargs="+", default=["glow", "realnvp"], choices=["glow", "realnvp"])
    p.add_argument("--levels", type=int, default=train.TrainConfig.levels)
    p.add_argument("--depth", type=int, default=train.TrainConfig.depth)
    p.add_argument("--width", type=int, default=train.TrainConfig.width)
    p.add_argument("--precisions", nargs="+", default=default_precisions(), choices=["fp32", "bf16"],
                   help="default: fp32, and bf16 on CPUs with native bf16")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}
    channels = load_dataset(args.dataset, args.data_root or None, args.image_size).channels
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    print(bench.report_header(peaks))
    for flow in args.flows:
        mcfg = Config(flow=flow, image_size=args.image_size, channels=channels, levels=args.levels,
                      depth=args.depth, width=args.width)
        flops = flops_per_step(mcfg, args.batch_size)
        print(f"{flow} {args.dataset} {args.image_size}x{args.image_size}, L {args.levels}, K {args.depth}, width "
              f"{args.width}, batch {args.batch_size}: {flops / args.batch_size / 1e9:.3f} GFLOP per training image")
        for precision in args.precisions:
            def config(out: str) -> train.TrainConfig:
                return train.TrainConfig(
                    dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                    batch_size=args.batch_size, steps=args.steps, minutes=0, threads=args.threads, flow=flow,
                    levels=args.levels, depth=args.depth, width=args.width, precision=precision, out=out,
                    log_every=args.warmup, sample_every=10 ** 9, ckpt_every=10 ** 9)

            images_per_s = bench.train_images_per_s(train.main, config)  # skips the warm-up window
            print(bench.report_row(f"{flow} {precision}", images_per_s, flops / args.batch_size, peaks), flush=True)


if __name__ == "__main__":
    main()
