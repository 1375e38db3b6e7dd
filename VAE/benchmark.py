"""Training throughput of the VAE on this machine: fp32 vs bf16 autocast, with and without channels_last.

    python benchmark.py                                     # train.py's defaults: MNIST, 32x32, width 16, batch 128
    python benchmark.py --precisions fp32 bf16              # also bf16 autocast (default only on native-bf16 CPUs)
    python benchmark.py --image-size 28 --width 32          # MNIST's native size, a wider network
    python benchmark.py --dataset shapes                    # RGB, the discretised logistic decoder

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps), then prints the share of this machine's measured matmul peaks it reaches.
The first line names the CPU: figures from different CPUs cannot be compared.
"""
from __future__ import annotations

import argparse

import torch

import train
from model import VAE, negative_elbo, observe
from shared import bench
from shared.data import load_dataset
from shared.dist import cpu_flags


def default_precisions() -> list[str]:
    """fp32, and bf16 where the CPU has native bf16 (AVX512-BF16 or AMX); emulated bf16 is 4-5x slower."""
    return ["fp32", "bf16"] if {"avx512_bf16", "amx_bf16"} & cpu_flags() else ["fp32"]


def flops_per_step(cfg: train.TrainConfig, channels: int) -> int:
    """FLOPs of one training step (encoder, decoder, backward) of the network these flags build."""
    model = VAE(train.model_config(cfg, channels))
    x_in, x = observe(torch.randint(0, 256, (cfg.batch_size, channels, cfg.image_size, cfg.image_size),
                                    dtype=torch.uint8), model.cfg.likelihood)

    def step() -> None:
        rec, kl, _ = model(x_in, x)
        negative_elbo(rec, kl).backward()

    return bench.count_flops(step)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=train.TrainConfig.image_size)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--width", type=int, default=train.TrainConfig.width)
    p.add_argument("--z-dim", type=int, default=train.TrainConfig.z_dim)
    p.add_argument("--precisions", nargs="+", default=default_precisions(), choices=["fp32", "bf16"],
                   help="default: fp32, and bf16 on CPUs with native bf16")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}  # only the ones asked for
    channels = load_dataset(args.dataset, args.data_root or None, args.image_size).channels
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))

    def config(out: str, precision: str = "fp32", channels_last: bool = True) -> train.TrainConfig:
        return train.TrainConfig(dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                                 batch_size=args.batch_size, steps=args.steps, threads=args.threads,
                                 width=args.width, z_dim=args.z_dim, precision=precision,
                                 channels_last=channels_last, out=out, log_every=args.warmup,
                                 sample_every=10 ** 9, ckpt_every=10 ** 9)

    flops = flops_per_step(config("unused"), channels)
    likelihood = train.resolve_likelihood("auto", channels)
    print(f"VAE {args.dataset} {args.image_size}x{args.image_size}, width {args.width}, z_dim {args.z_dim}, "
          f"batch {args.batch_size}, {likelihood}: {flops / args.batch_size / 1e9:.4f} GFLOP per training image")
    print(bench.report_header(peaks))
    for precision in args.precisions:
        for channels_last in (False, True):
            images_per_s = bench.train_images_per_s(train.main, lambda out: config(out, precision, channels_last))
            name = f"{precision} {'channels_last' if channels_last else 'contiguous'}"
            print(bench.report_row(name, images_per_s, flops / args.batch_size, peaks), flush=True)


if __name__ == "__main__":
    main()
