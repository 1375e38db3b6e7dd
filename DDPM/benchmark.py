"""Training throughput of DDPM on this machine, for a few U-Net widths, and sampling images/s.

    python benchmark.py --threads 1                  # train.py's default U-Net, fp32 and bf16 autocast
    python benchmark.py --widths 16 32 --precisions fp32

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps), prints the share of this machine's measured matmul peak it reaches, then
the images/s of DDIM sampling at --sample-steps steps. The first line names the CPU: figures from different CPUs
cannot be compared.
"""
from __future__ import annotations

import argparse
import time

import torch

import train
from model import UNet, l_simple, sample, schedule_of
from shared import bench
from shared.data import load_dataset


def flops_per_step(cfg: train.TrainConfig, channels: int) -> int:
    """FLOPs of one training step (forward and backward of L_simple) of train.py's U-Net under `cfg`."""
    mcfg = train.model_config(cfg, channels)
    net, sch = UNet(mcfg), schedule_of(mcfg)
    x = torch.randn(cfg.batch_size, channels, cfg.image_size, cfg.image_size)
    t = torch.randint(1, mcfg.timesteps + 1, (cfg.batch_size,))
    return bench.count_flops(lambda: l_simple(net, sch, x, t, torch.randn_like(x), mcfg.prediction).backward())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--widths", type=int, nargs="+", default=[train.TrainConfig.width])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the sampling row (0 = none)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    channels = load_dataset(args.dataset, args.data_root or None, args.image_size).channels
    print(bench.report_header(peaks))
    for width in args.widths:
        def config(out: str, precision: str = "fp32") -> train.TrainConfig:
            return train.TrainConfig(
                dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                batch_size=args.batch_size, steps=args.steps, threads=args.threads, width=width,
                precision=precision, out=out, log_every=args.warmup, sample_every=10 ** 9, ckpt_every=10 ** 9)

        flops = flops_per_step(config("unused"), channels)
        for precision in args.precisions:
            images_per_s = bench.train_images_per_s(train.main, lambda out: config(out, precision))  # after warm-up
            print(bench.report_row(f"width {width} {precision}", images_per_s, flops / args.batch_size, peaks),
                  flush=True)
        if args.sample_steps:
            cfg = config("unused")
            net = UNet(train.model_config(cfg, channels)).eval()
            for precision in args.precisions:
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    sample(net, 64, args.sample_steps, generator=torch.Generator().manual_seed(0))
                print(f"sampling, width {width} {precision}: DDIM {args.sample_steps} steps, batch 64: "
                      f"{64 / (time.perf_counter() - start):.2f} images/s", flush=True)

if __name__ == "__main__":
    main()
