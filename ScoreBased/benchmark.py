"""Training throughput of ScoreBased on this machine, for a few U-Net widths, and sampling images/s.

    python benchmark.py                                     # train.py's defaults: MNIST 32x32, widths 16 24 32
    python benchmark.py --widths 16 --precisions fp32 bf16  # bf16 autocast too (slow on CPUs without native bf16)

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its
metrics.jsonl (after --warmup steps), prints the share of this machine's measured matmul peak it reaches, then
the images/s of the PC sampler at --sample-steps steps (2 network evaluations per step) and of the ODE sampler
at rtol = atol = 1e-3. The first line names the CPU: figures from different CPUs cannot be compared.
"""
from __future__ import annotations

import argparse
import time

import torch

import train
from model import SDE, Config, dsm_loss, sample
from unet import UNet
from shared import bench
from shared.data import load_dataset


def flops_per_step(image_size: int, channels: int, batch: int, width: int) -> int:
    """FLOPs of one training step (forward and backward of the DSM loss) of the default U-Net at `width`."""
    net = UNet(Config(image_size=image_size, channels=channels, width=width))
    x = torch.randn(batch, channels, image_size, image_size)
    return bench.count_flops(lambda: dsm_loss(net, SDE("vp"), x, torch.rand(batch), torch.randn_like(x)).backward())


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
    p.add_argument("--sample-steps", type=int, default=20, help="PC steps of the sampling row (0 = no sampling rows)")
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
        flops = flops_per_step(args.image_size, channels, args.batch_size, width)
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
            net = UNet(Config(image_size=args.image_size, channels=channels, width=width)).eval()
            with torch.no_grad():  # random weights: an untrained (zero) output would make the ODE trivially easy
                for prm in net.parameters():
                    prm.copy_(torch.randn_like(prm) * 0.05)
            for name, kw in (("PC", dict(sampler="pc", steps=args.sample_steps)), ("ODE", dict(sampler="ode"))):
                start = time.perf_counter()
                _, nfe = sample(net, 64, generator=torch.Generator().manual_seed(0), **kw)
                print(f"width {width}: {name} sampler, {nfe} NFE, batch 64: "
                      f"{64 / (time.perf_counter() - start):.2f} images/s", flush=True)


if __name__ == "__main__":
    main()
